//! The renter's persistent storage, one volume per rental, behind a trait: the directory backend
//! and the USB drive (LUKS2 or plain ext4), with the discovery of that drive; and the renter's
//! control of the volume's key ([`VolumeKeys`], through the governor's socket).

use std::future::Future;
use std::path::PathBuf;

use crate::types::Secret;

pub mod dir;
pub mod discover;
pub mod keys;
pub mod luks;
pub(crate) mod mountinfo;
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
    #[error(transparent)]
    Luks(#[from] luks::LuksError),
    /// A renter key request that cannot be met as asked (wrong passphrase, nothing to unlock…).
    #[error("{0}")]
    Refused(String),
}

impl From<crate::command::CommandError> for StorageError {
    fn from(e: crate::command::CommandError) -> Self {
        Self::Command {
            command: e.command,
            detail: e.detail,
        }
    }
}

/// The `map_err` of an I/O step on `path`.
pub(crate) fn io(
    path: &std::path::Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> StorageError + use<> {
    let path = path.to_owned();
    move |source| StorageError::Io {
        path,
        action,
        source,
    }
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

    /// Whether a volume mounted after the container started reaches it (the container's bind of
    /// the volume must then be a mount-propagation slave).
    fn mounts_propagate(&self) -> bool {
        false
    }

    /// Whether the renter container's writable layer lives on the volume ([`Storage::layer_root`]):
    /// such a container never starts while the volume is locked.
    fn keeps_layers(&self) -> bool {
        false
    }

    /// Where the renter container's writable layer goes on volume `id` while it is open
    /// (`runtime/layer.rs`); None for a storage without one, or a volume still locked.
    fn layer_root(&self, _id: &str) -> Option<PathBuf> {
        None
    }
}

/// One storage shared by the lifecycle and the socket's key requests.
impl<T: Storage> Storage for std::sync::Arc<T> {
    fn prepare(&self, id: &str) -> impl Future<Output = Result<PathBuf, StorageError>> + Send {
        (**self).prepare(id)
    }

    fn open(&self, id: &str) -> impl Future<Output = Result<PathBuf, StorageError>> + Send {
        (**self).open(id)
    }

    fn wipe(&self, id: &str) -> impl Future<Output = Result<(), StorageError>> + Send {
        (**self).wipe(id)
    }

    fn verify_wiped(&self, id: &str) -> impl Future<Output = Result<(), StorageError>> + Send {
        (**self).verify_wiped(id)
    }

    fn describe(&self) -> String {
        (**self).describe()
    }

    fn mounts_propagate(&self) -> bool {
        (**self).mounts_propagate()
    }

    fn keeps_layers(&self) -> bool {
        (**self).keeps_layers()
    }

    fn layer_root(&self, id: &str) -> Option<PathBuf> {
        (**self).layer_root(id)
    }
}

/// Who can open the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyHolder {
    /// Not encrypted.
    None,
    /// The device key in the state dir: opens by itself after a reboot.
    Device,
    /// Only the renter's passphrase: locked after a reboot until the renter unlocks.
    Renter,
}

/// The volume's encryption state, for the renter's `p2pvps-storage status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyStatus {
    pub encrypted: bool,
    pub holder: KeyHolder,
    /// Encrypted, and not open: waiting for the renter's passphrase.
    pub locked: bool,
}

/// The renter's control of a volume's key. Blocking calls (key derivation takes seconds): run them
/// off the async threads.
pub trait VolumeKeys: Send + Sync {
    fn key_status(&self, id: &str) -> Result<KeyStatus, StorageError>;

    /// Set the renter's passphrase (`old`: the current one, once the renter holds the key) and
    /// remove the device key: from then on only the passphrase opens the volume.
    fn set_passphrase(
        &self,
        id: &str,
        passphrase: &Secret,
        old: Option<&Secret>,
    ) -> Result<(), StorageError>;

    /// Open and mount a locked volume with the renter's passphrase.
    fn unlock(&self, id: &str, passphrase: &Secret) -> Result<PathBuf, StorageError>;
}
