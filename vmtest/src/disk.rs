//! Disk images for the guests: sparse raw files (they cost nothing until written) and ext4 images for the
//! state disk that /init mounts at /state.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MIB: u64 = 1024 * 1024;
/// By path: a non-login PATH may lack /usr/sbin.
const MKE2FS: &str = "/usr/sbin/mke2fs";

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot create the sparse disk {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot run mke2fs for {path}: {source}")]
    Spawn { path: PathBuf, source: io::Error },
    #[error("mke2fs {path} failed: {stderr}")]
    Mkfs { path: PathBuf, stderr: String },
}

/// Creates (or truncates) a sparse raw image of `size` bytes.
pub fn sparse(path: &Path, size: u64) -> Result<PathBuf, DiskError> {
    let create = |source| DiskError::Create {
        path: path.to_owned(),
        source,
    };
    File::create(path)
        .map_err(create)?
        .set_len(size)
        .map_err(create)?;
    Ok(path.to_owned())
}

/// A sparse image formatted ext4 on the host (mke2fs works on a plain file, no kernel support needed).
pub fn ext4(path: &Path, size: u64) -> Result<PathBuf, DiskError> {
    sparse(path, size)?;
    let out = Command::new(MKE2FS)
        .args(["-q", "-F", "-t", "ext4", "-L", "vmtest"])
        .arg(path)
        .output()
        .map_err(|source| DiskError::Spawn {
            path: path.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(DiskError::Mkfs {
            path: path.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_and_ext4_images_take_little_space() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sparse(&dir.path().join("raw.img"), 512 * MIB).unwrap();
        let meta = raw.metadata().unwrap();
        assert_eq!(meta.len(), 512 * MIB);
        assert!(
            meta.blocks() * 512 < MIB,
            "not sparse: {} blocks",
            meta.blocks()
        );
        let fs = ext4(&dir.path().join("fs.img"), 64 * MIB).unwrap();
        let mut magic = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(
            &File::open(fs).unwrap(),
            &mut magic,
            1024 + 0x38,
        )
        .unwrap();
        assert_eq!(magic, [0x53, 0xef], "ext superblock magic");
    }
}
