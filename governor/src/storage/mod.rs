//! The renter's persistent storage, one volume per rental, behind a trait: the directory backend
//! and the USB drive (plain ext4 for now; LUKS2 comes beside it), with the discovery of that drive.

use std::future::Future;
use std::path::PathBuf;

pub mod dir;
pub mod discover;
mod mountinfo;
pub mod usb;

pub use dir::DirStorage;
pub use discover::{DiscoverError, Disk, HostPaths};
pub use usb::UsbStorage;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: still present after the wipe")]
    NotWiped { path: PathBuf },
    /// The device holds data after the wipe: where, and what.
    #[error("{path}: not wiped: {detail}")]
    Residue { path: PathBuf, detail: String },
    /// The device cannot be used as asked (not ours, in use, too small, the kernel disagrees…).
    #[error("{path}: {detail}")]
    Device { path: PathBuf, detail: String },
    /// A helper program (mkfs.ext4, mount, blockdev…) failed; `detail` has its exit status and stderr.
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
}

pub trait Storage: Send + Sync {
    /// Make volume `id` ready and return the host path to mount at `/media/storage`. Idempotent:
    /// anything left of a half-made volume of that id is discarded first.
    fn prepare(&self, id: &str) -> impl Future<Output = Result<PathBuf, StorageError>> + Send;

    /// The host path of volume `id` when it is ready (resuming a live rental), without touching it.
    fn open(&self, id: &str) -> impl Future<Output = Result<PathBuf, StorageError>> + Send;

    /// Destroy volume `id` so nothing of the renter survives. Idempotent.
    fn wipe(&self, id: &str) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Check that volume `id` is gone; a wipe is not done until this passes.
    fn verify_wiped(&self, id: &str) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// A short description for logs and status.
    fn describe(&self) -> String;
}
