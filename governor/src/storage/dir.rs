//! `storageDevice: "none"`: each rental's storage is a directory on the state partition.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::{Storage, StorageError, io};

#[derive(Debug, Clone)]
pub struct DirStorage {
    root: PathBuf,
}

impl DirStorage {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }
}

async fn remove_all(path: &Path) -> Result<(), StorageError> {
    match tokio::fs::remove_dir_all(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path, "remove")(e)),
        _ => Ok(()),
    }
}

impl Storage for DirStorage {
    async fn prepare(&self, id: &str) -> Result<PathBuf, StorageError> {
        let path = self.path(id);
        remove_all(&path).await?;
        tokio::fs::create_dir_all(&path)
            .await
            .map_err(io(&path, "create"))?;
        // Root-owned and closed to other host users; the container chowns it to the renter.
        tokio::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(io(&self.root, "chmod"))?;
        Ok(path)
    }

    async fn open(&self, id: &str) -> Result<PathBuf, StorageError> {
        let path = self.path(id);
        tokio::fs::metadata(&path)
            .await
            .map_err(io(&path, "open"))?;
        Ok(path)
    }

    async fn wipe(&self, id: &str) -> Result<(), StorageError> {
        remove_all(&self.path(id)).await
    }

    async fn verify_wiped(&self, id: &str) -> Result<(), StorageError> {
        let path = self.path(id);
        match tokio::fs::symlink_metadata(&path).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, "check")(e)),
            Ok(_) => Err(StorageError::NotWiped { path }),
        }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
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
