//! The errors of starting and running the devserver: each variant carries what failed (the address,
//! the state file) so the message alone tells an operator what to fix.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::id::InvalidDeviceId;

/// Why the devserver could not start, or could not save its state.
#[derive(Debug, thiserror::Error)]
pub enum DevServerError {
    /// A device id given in [`crate::Options::devices`] (or `--device`) is not 24 hex digits.
    #[error(transparent)]
    InvalidDeviceId(#[from] InvalidDeviceId),

    /// The lease length does not fit a calendar duration (hundreds of millions of years).
    #[error("lease of {seconds} s is too long")]
    LeaseTooLong {
        /// The lease asked for, in seconds.
        seconds: u64,
    },

    /// Port 0 cannot be handed out as a tunnel port.
    #[error("first port must be between 1 and 65535, not 0")]
    InvalidFirstPort,

    /// The listening socket could not be bound (address in use, no permission…).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// The bound socket did not report its address.
    #[error("cannot read the bound address of {addr}: {source}")]
    LocalAddr {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// The state file exists but could not be read.
    #[error("cannot read state file {}: {source}", path.display())]
    ReadState {
        /// The state file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// The state file is not a devserver state document.
    #[error("state file {} is not valid devserver state: {source}", path.display())]
    ParseState {
        /// The state file.
        path: PathBuf,
        /// Where and why parsing failed.
        source: serde_json::Error,
    },

    /// The state file could not be written (temp file, fsync or rename).
    #[error("cannot write state file {}: {source}", path.display())]
    WriteState {
        /// The state file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}
