//! The renter's persistent storage, one volume per rental, behind a trait: the directory backend
//! here; the USB drive with LUKS2 comes beside it.

use std::future::Future;
use std::path::PathBuf;

pub mod dir;

pub use dir::DirStorage;

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
