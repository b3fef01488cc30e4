//! `storageDevice: "none"`: each rental's storage on the host's own filesystem (the state
//! partition on the image, the root filesystem on the `.deb`).
//!
//! A renter must not fill a filesystem the host needs (DESIGN.md §9): so the storage is a
//! fixed-size ext4 volume in a file, its blocks reserved up front (`fallocate`: a sparse file would
//! let the renter take the host's free space after all), loop-mounted at `<root>/<id>`. A full
//! volume gives the renter ENOSPC and the host nothing. Without a size (the lifecycle's fast
//! tests), a plain directory.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tracing::info;

use super::{Storage, StorageError, io, mountinfo, usb::umount};
use crate::command::run;

#[derive(Debug, Clone)]
pub struct DirStorage {
    root: PathBuf,
    /// The volume's size in bytes; None: a plain directory, unbounded.
    size: Option<u64>,
}

impl DirStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            size: None,
        }
    }

    /// Each rental gets a volume of `bytes`, reserved on the host's filesystem.
    #[must_use]
    pub fn sized(mut self, bytes: u64) -> Self {
        self.size = Some(bytes);
        self
    }

    fn path(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn image(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.img"))
    }

    fn mounted(path: &Path) -> Result<bool, StorageError> {
        let mounts = mountinfo::read(Path::new("/proc/self/mountinfo"))
            .map_err(io(Path::new("/proc/self/mountinfo"), "read"))?;
        Ok(mounts.iter().any(|m| m.target == path))
    }

    /// Loop-mount the volume's image at its mount point (again after a reboot).
    fn mount(&self, id: &str) -> Result<PathBuf, StorageError> {
        let path = self.path(id);
        if Self::mounted(&path)? {
            return Ok(path);
        }
        std::fs::create_dir_all(&path).map_err(io(&path, "create"))?;
        let image = self.image(id);
        run(
            "mount",
            [
                "-o".as_ref(),
                "loop,nodev,nosuid".as_ref(),
                image.as_os_str(),
                path.as_os_str(),
            ],
        )?;
        Ok(path)
    }

    /// A fresh volume: the old one (a half-made one, after a restart) goes first.
    fn make(&self, id: &str, size: u64) -> Result<PathBuf, StorageError> {
        self.remove(id)?;
        std::fs::create_dir_all(&self.root).map_err(io(&self.root, "create"))?;
        // Root-owned and closed to other host users; the container chowns the volume's root.
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&self.root, "chmod"))?;
        let image = self.image(id);
        if let Err(e) = run(
            "fallocate",
            ["-l".as_ref(), size.to_string().as_ref(), image.as_os_str()],
        ) {
            let _ = std::fs::remove_file(&image);
            return Err(StorageError::Device {
                path: image,
                detail: format!(
                    "cannot reserve {} MB for the renter's volume ({e}); free space there or set a smaller storageSizeMb",
                    size >> 20
                ),
            });
        }
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o600))
            .map_err(io(&image, "chmod"))?;
        // -m 0: the renter gets the whole volume (no blocks reserved for a root it shares);
        // nodiscard: mke2fs would otherwise punch the reserved blocks out of the file again.
        run(
            "mkfs.ext4",
            [
                "-q".as_ref(),
                "-F".as_ref(),
                "-m".as_ref(),
                "0".as_ref(),
                "-E".as_ref(),
                "nodiscard".as_ref(),
                image.as_os_str(),
            ],
        )?;
        // mke2fs zeroes some ranges by punching holes (where the filesystem has no zero-range):
        // reserve them again.
        run(
            "fallocate",
            ["-l".as_ref(), size.to_string().as_ref(), image.as_os_str()],
        )?;
        let path = self.mount(id)?;
        // The renter starts with an empty volume.
        let lost = path.join("lost+found");
        std::fs::remove_dir(&lost).map_err(io(&lost, "remove"))?;
        info!(
            volume = id,
            mb = size >> 20,
            "renter volume made in a file of fixed size"
        );
        Ok(path)
    }

    /// Unmount and delete the volume (image and mount point), or the plain directory.
    fn remove(&self, id: &str) -> Result<(), StorageError> {
        let path = self.path(id);
        if Self::mounted(&path)? {
            umount(&path)?;
        }
        let image = self.image(id);
        match std::fs::remove_file(&image) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(&image, "remove")(e));
            }
            _ => {}
        }
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path, "remove")(e)),
            _ => Ok(()),
        }
    }
}

/// Runs blocking storage work (mount, mkfs) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("storage work does not panic")
}

impl Storage for DirStorage {
    async fn prepare(&self, id: &str) -> Result<PathBuf, StorageError> {
        let (s, id) = (self.clone(), id.to_owned());
        blocking(move || {
            if let Some(size) = s.size {
                return s.make(&id, size);
            }
            s.remove(&id)?;
            let path = s.path(&id);
            std::fs::create_dir_all(&path).map_err(io(&path, "create"))?;
            std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o700))
                .map_err(io(&s.root, "chmod"))?;
            Ok(path)
        })
        .await
    }

    async fn open(&self, id: &str) -> Result<PathBuf, StorageError> {
        let (s, id) = (self.clone(), id.to_owned());
        blocking(move || {
            if s.size.is_some() {
                let image = s.image(&id);
                std::fs::metadata(&image).map_err(io(&image, "open"))?;
                return s.mount(&id);
            }
            let path = s.path(&id);
            std::fs::metadata(&path).map_err(io(&path, "open"))?;
            Ok(path)
        })
        .await
    }

    async fn wipe(&self, id: &str) -> Result<(), StorageError> {
        let (s, id) = (self.clone(), id.to_owned());
        blocking(move || s.remove(&id)).await
    }

    async fn verify_wiped(&self, id: &str) -> Result<(), StorageError> {
        for path in [self.path(id), self.image(id)] {
            match tokio::fs::symlink_metadata(&path).await {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, "check")(e)),
                Ok(_) => return Err(StorageError::NotWiped { path }),
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        match self.size {
            Some(size) => format!("{} MB volumes in {}", size >> 20, self.root.display()),
            None => format!("directory {}", self.root.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prepare_wipe_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DirStorage::new(tmp.path().join("storage"));
        let p = s.prepare("v1").await.unwrap();
        std::fs::write(p.join("canary"), "renter data").unwrap();
        assert_eq!(s.open("v1").await.unwrap(), p);
        assert!(matches!(
            s.verify_wiped("v1").await,
            Err(StorageError::NotWiped { .. })
        ));
        s.wipe("v1").await.unwrap();
        s.verify_wiped("v1").await.unwrap();
        assert!(!p.exists());
        s.wipe("v1").await.unwrap(); // idempotent
        assert!(s.open("v1").await.is_err());
    }

    #[tokio::test]
    async fn prepare_discards_a_half_made_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let s = DirStorage::new(tmp.path());
        let p = s.prepare("v").await.unwrap();
        std::fs::write(p.join("old"), "x").unwrap();
        let p = s.prepare("v").await.unwrap();
        assert_eq!(std::fs::read_dir(&p).unwrap().count(), 0);
    }
}
