//! The guest kernel and its modules, as `scripts/vm-assets` prepared them in the cache directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::{fs, io};

/// Where `scripts/vm-assets` keeps its cache unless `P2PVPS_VM_CACHE` says otherwise.
pub const DEFAULT_CACHE: &str = "/var/cache/p2pvps/vm";
pub const CACHE_ENV: &str = "P2PVPS_VM_CACHE";

#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    #[error("cannot run {script}: {source}")]
    Spawn { script: PathBuf, source: io::Error },
    #[error("{script} failed ({status}); its stderr:\n{stderr}")]
    Script {
        script: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} has no {key}= line (written by scripts/vm-assets)")]
    MissingKey { path: PathBuf, key: &'static str },
    #[error("{path} names {what} {missing}, which does not exist: run scripts/vm-assets")]
    Missing {
        path: PathBuf,
        what: &'static str,
        missing: PathBuf,
    },
}

/// The Debian kernel the VMs boot: its release, its bzImage and its depmod-ed modules directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelAssets {
    pub kver: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

impl KernelAssets {
    /// The cache's `kernel.env`; runs `scripts/vm-assets` first if that file is missing or names
    /// files that are gone. Resolved once per process: every VM of a test binary boots the same kernel.
    pub fn locate() -> Result<Self, AssetsError> {
        static CACHED: OnceLock<KernelAssets> = OnceLock::new();
        if let Some(found) = CACHED.get() {
            return Ok(found.clone());
        }
        let env_file = cache_dir().join("kernel.env");
        let assets = if let Ok(found) = Self::read_env(&env_file) {
            found
        } else {
            run_vm_assets()?;
            Self::read_env(&env_file)?
        };
        Ok(CACHED.get_or_init(|| assets).clone())
    }

    /// Parses `KEY=VALUE` lines as the script writes them (no quoting: it refuses odd cache paths).
    pub fn read_env(path: &Path) -> Result<Self, AssetsError> {
        let text = fs::read_to_string(path).map_err(|source| AssetsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let get = |key: &'static str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .map(str::to_owned)
                .ok_or(AssetsError::MissingKey {
                    path: path.to_owned(),
                    key,
                })
        };
        let assets = Self {
            kver: get("KVER")?,
            vmlinuz: get("VMLINUZ")?.into(),
            modules: get("MODULES")?.into(),
        };
        for (what, file) in [
            ("the kernel", &assets.vmlinuz),
            ("the modules.dep", &assets.modules.join("modules.dep")),
        ] {
            if !file.is_file() {
                return Err(AssetsError::Missing {
                    path: path.to_owned(),
                    what,
                    missing: file.clone(),
                });
            }
        }
        Ok(assets)
    }
}

pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV).map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from)
}

/// The workspace's `scripts/vm-assets` (this crate is always built from the workspace).
pub fn vm_assets_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/vm-assets")
}

fn run_vm_assets() -> Result<(), AssetsError> {
    let script = vm_assets_script();
    let out = Command::new(&script)
        .output()
        .map_err(|source| AssetsError::Spawn {
            script: script.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(AssetsError::Script {
            script,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_parsing_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        let modules = dir.path().join("modules");
        fs::create_dir(&modules).unwrap();
        fs::write(&kernel, b"").unwrap();
        let env = dir.path().join("kernel.env");
        fs::write(
            &env,
            format!(
                "KVER=6.1.0-9-amd64\nVMLINUZ={}\nMODULES={}\n",
                kernel.display(),
                modules.display()
            ),
        )
        .unwrap();
        assert!(matches!(
            KernelAssets::read_env(&env),
            Err(AssetsError::Missing { .. })
        ));
        fs::write(modules.join("modules.dep"), b"").unwrap();
        let found = KernelAssets::read_env(&env).unwrap();
        assert_eq!(found.kver, "6.1.0-9-amd64");
        assert_eq!(found.vmlinuz, kernel);
        fs::write(&env, "KVER=x\n").unwrap();
        assert!(matches!(
            KernelAssets::read_env(&env),
            Err(AssetsError::MissingKey { key: "VMLINUZ", .. })
        ));
    }
}
