//! Saving the store atomically: write a temp file beside the state file, fsync it, rename it over
//! the state file, fsync the directory. A crash leaves either the old or the new state, never half.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use crate::error::DevServerError;

/// Where the state lives, and the lock that keeps writes in order.
#[derive(Debug)]
pub struct Persister {
    /// The state file (`--state`).
    path: PathBuf,
    /// The temp file written before the rename: in the same directory, so the rename is atomic.
    tmp: PathBuf,
    /// The directory, fsynced after the rename so the new name itself is durable.
    dir: PathBuf,
    /// Held from taking a snapshot until it is on disk, so an older snapshot never overwrites a newer.
    lock: tokio::sync::Mutex<()>,
}

impl Persister {
    pub fn new(path: PathBuf) -> Self {
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{name}.tmp"));
        Self {
            path,
            tmp,
            dir,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state file; `None` when it does not exist yet.
    pub async fn load(&self) -> Result<Option<Vec<u8>>, DevServerError> {
        match tokio::fs::read(&self.path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DevServerError::ReadState {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Takes the write lock. Snapshot the state while holding it, then [`Self::write`].
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Writes `bytes` as the new state file. Call with the guard from [`Self::lock`] held.
    pub async fn write(&self, bytes: &[u8]) -> Result<(), DevServerError> {
        self.write_inner(bytes)
            .await
            .map_err(|source| DevServerError::WriteState {
                path: self.path.clone(),
                source,
            })
    }

    async fn write_inner(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut file = tokio::fs::File::create(&self.tmp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&self.tmp, &self.path).await?;
        // Make the rename durable. Some filesystems refuse to fsync a directory: not fatal.
        if let Ok(dir) = tokio::fs::File::open(&self.dir).await {
            let _ = dir.sync_all().await;
        }
        Ok(())
    }
}
