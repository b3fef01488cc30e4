//! The device keys: one random key per encrypted volume, in `<state_dir>/keys/<id>.key` (0600, in a
//! 0700 directory), so a live rental's volume opens again after a reboot without anyone typing a
//! passphrase. This is the only key material the governor keeps on disk; it goes when the renter
//! takes the key over (`set-passphrase`) and at the wipe, after the LUKS header is destroyed.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::{StorageError, io};

/// Key length: as long as the volume key it protects (512 bits).
pub const KEY_BYTES: usize = 64;

/// Where the device keys of one state dir live.
#[derive(Debug, Clone)]
pub struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("keys"),
        }
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }

    /// A fresh random key for volume `id`, saved (temp file, fsync, rename, fsync of the directory)
    /// before it is returned, so it is never used without being on disk.
    pub fn create(&self, id: &str) -> Result<Vec<u8>, StorageError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir, "create"))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&self.dir, "chmod"))?;
        let key: [u8; KEY_BYTES] = rand::random();
        let path = self.path(id);
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp, "create"))?;
        f.write_all(&key).map_err(io(&tmp, "write"))?;
        f.sync_all().map_err(io(&tmp, "fsync"))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path, "rename into place"))?;
        self.sync_dir()?;
        Ok(key.to_vec())
    }

    /// The key of volume `id`, if the device holds it.
    pub fn load(&self, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path(id);
        match std::fs::read(&path) {
            Ok(key) if key.len() == KEY_BYTES => Ok(Some(key)),
            Ok(key) => Err(StorageError::Device {
                path,
                detail: format!(
                    "device key has {} bytes, not {KEY_BYTES}: damaged",
                    key.len()
                ),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, "read")(e)),
        }
    }

    /// Delete the key of volume `id` (and any half-written one), durably. Nothing to do if absent.
    pub fn delete(&self, id: &str) -> Result<(), StorageError> {
        let path = self.path(id);
        for p in [path.with_extension("tmp"), path] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(&p, "delete")(e));
                }
                _ => {}
            }
        }
        if self.dir.exists() {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir, "fsync"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn keys_are_private_random_and_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = KeyDir::new(tmp.path());
        assert_eq!(keys.load("v1").unwrap(), None);
        let a = keys.create("v1").unwrap();
        let b = keys.create("v2").unwrap();
        assert_eq!(a.len(), KEY_BYTES);
        assert_ne!(a, b);
        assert_eq!(keys.load("v1").unwrap(), Some(a));
        let meta = std::fs::metadata(keys.path("v1")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let dir = std::fs::metadata(tmp.path().join("keys")).unwrap();
        assert_eq!(dir.mode() & 0o777, 0o700);
        keys.delete("v1").unwrap();
        keys.delete("v1").unwrap();
        assert_eq!(keys.load("v1").unwrap(), None);
        assert!(keys.load("v2").unwrap().is_some());
    }

    #[test]
    fn a_truncated_key_is_an_error_not_a_new_key() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = KeyDir::new(tmp.path());
        keys.create("v1").unwrap();
        std::fs::write(keys.path("v1"), b"short").unwrap();
        let e = keys.load("v1").unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
    }
}
