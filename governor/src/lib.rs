//! p2pvps-governor: the host daemon of a P2P VPS device. See DESIGN.md §4 for the architecture;
//! `lifecycle` sequences the other modules, which do not call each other.

pub mod check;
pub mod clock;
pub mod command;
pub mod config;
pub mod daemon;
pub mod host;
pub mod led;
pub mod lifecycle;
pub mod logging;
pub mod marketplace;
pub mod metrics;
pub mod notify;
pub mod page;
pub mod runtime;
pub mod sandbox;
pub mod slots;
pub mod socket;
pub mod state;
pub mod status;
pub mod storage;
pub mod types;
pub mod update;
pub mod wifi;

/// Exit status for a bad device-config.json (sysexits' EX_CONFIG); the systemd unit does not restart
/// on it (`RestartPreventExitStatus=78`), since a restart cannot fix the file.
pub const EXIT_CONFIG: u8 = 78;

/// Where the governor keeps its state (the SD card's state partition on the image).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/p2pvps";

/// A spawned task that ends with its owner (a tunnel keeper's child is killed with it).
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
