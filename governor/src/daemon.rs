//! `p2pvps-governor run`: wires the real implementations together and runs the lifecycle.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use crate::clock::{Clock as _, SystemClock};
use crate::config::{ConfigError, DeviceConfig, StorageDevice};
use crate::lifecycle::{Lifecycle, LifecycleError, Settings};
use crate::marketplace::{Marketplace, MarketplaceError};
use crate::runtime::DockerRuntime;
use crate::socket::{self, Hub, SocketError, TunnelEndpoint};
use crate::state::StateStore;
use crate::storage::DirStorage;
use p2pvps_common::Backoff;

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
}

/// Run the governor until `shutdown` completes.
pub async fn run(opts: RunOptions, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    tokio::pin!(shutdown);
    let config = tokio::select! {
        () = &mut shutdown => return Ok(()),
        c = wait_for_config(&opts.config) => c?,
    };
    info!(device = %config.device_id, server = %config.server_url, "config loaded");
    let storage_root = opts.state_dir.join("storage");
    let storage = match &config.storage_device {
        StorageDevice::None => DirStorage::new(&storage_root),
        other => {
            return Err(ConfigError::Invalid {
                path: opts.config.clone(),
                key: "storageDevice",
                reason: format!(
                    "{other:?}: USB drive storage is not in this build yet; set \"storageDevice\": \"none\""
                ),
            }
            .into());
        }
    };
    std::fs::create_dir_all(&storage_root).ok();
    let (specs, limits) = crate::host::specs(&storage_root);
    info!(?specs, "measured this device");
    let mut settings = Settings::new(config.device_id.clone(), specs, limits);
    settings.heartbeat = Duration::from_secs(config.heartbeat_seconds);
    settings.image.clone_from(&config.renter_image);
    settings.image_tar.clone_from(&config.renter_image_tar);
    settings.container_name.clone_from(&opts.container_name);
    settings.network.clone_from(&opts.network);
    settings.tunnel = Some(TunnelEndpoint {
        server: config.ssh_server.clone(),
        server_port: config.ssh_server_port.get(),
        user: config.ssh_user.clone(),
        password: config.ssh_password.clone(),
        host_key: config.ssh_host_key.clone(),
    });
    let socket_dir = socket::host_dir(&opts.state_dir);
    settings.socket_dir = Some(socket_dir.clone());
    let hub = Hub::new(&opts.state_dir);
    let _socket = socket::serve(&socket_dir, hub.clone())?;
    let market = Marketplace::new(&config.server_url, config.device_id.clone())?;
    let runtime = tokio::select! {
        () = &mut shutdown => return Ok(()),
        r = connect_docker() => r,
    };
    let lifecycle = Lifecycle::new(
        market,
        runtime,
        storage,
        SystemClock,
        StateStore::new(&opts.state_dir),
        settings,
    )
    .with_hub(hub);
    lifecycle.run(shutdown).await?;
    Ok(())
}

/// The config, once the file exists. A missing file is the normal state of a fresh device (the owner
/// has not copied it yet); a present but invalid one is an error for the owner to fix.
async fn wait_for_config(path: &std::path::Path) -> Result<DeviceConfig, ConfigError> {
    let mut warned = false;
    loop {
        match DeviceConfig::load(path) {
            Err(ConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
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

async fn connect_docker() -> DockerRuntime {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        match DockerRuntime::connect().await {
            Ok(rt) => {
                info!("connected to the Docker engine");
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
