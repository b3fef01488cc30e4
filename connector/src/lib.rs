//! The connector runs inside the renter's container and keeps the reverse SSH tunnel to the
//! marketplace's endpoint up, so that `ssh -p <port> user@<server>` reaches the container's sshd.

pub mod governor;
pub mod logging;
pub mod login;
pub mod notices;
pub mod secret;
pub mod serve;
pub mod session;
pub mod settings;
pub mod shutdown;
pub mod state;
pub mod storage_cli;
pub mod tunnel;

pub use settings::TunnelSettings;
pub use state::TunnelState;

/// Exit status for settings that cannot work (sysexits' EX_CONFIG): a supervisor should not
/// restart us with the same settings.
pub const EXIT_CONFIG: u8 = 78;
