//! The container engine's data root on the renter's volume.
//!
//! Docker keeps every container's writable layer under its data root. With the root on the rental's
//! volume (its `engine/` directory, `storage/usb.rs`), what the renter writes anywhere in the
//! container (an `apt install`, `/root`, `/etc`) is encrypted with the volume and goes with its
//! crypto-erase; on the state partition it would outlive the rental on the SD card's free blocks.
//!
//! The engine reads its data root once, at start, from a fixed path (`data-root` in daemon.json): so
//! the engine is stopped, the wanted directory bind-mounted at that path, and the engine started
//! again. Between rentals, and while a renter-held volume is locked, the root is a fallback
//! directory on the state partition (the image mounts it there at boot, `overlays/etc/fstab`).

use std::future::Future;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tracing::{debug, info};

use crate::command::{self, CommandError};
use crate::storage::mountinfo;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// A helper program (systemctl, mount, umount) failed.
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// A boxed future, so that the lifecycle holds any engine without another type parameter.
pub type EngineFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, EngineError>> + Send + 'a>>;

/// Where the engine keeps its data. Both calls return `true` when the engine was restarted.
pub trait Engine: Send + Sync {
    /// Make `root` (an existing directory) the engine's data root.
    fn attach<'a>(&'a self, root: &'a Path) -> EngineFuture<'a>;

    /// Put the data root back on the fallback directory (created if missing), off any volume.
    fn detach(&self) -> EngineFuture<'_>;

    /// Bytes free on the fallback's filesystem (the state partition): what a container running
    /// there (the stand-in of a locked volume) writes comes out of it. None: not known.
    fn fallback_free(&self) -> Option<u64>;
}

/// The real engine: Docker's data root bound at its fixed path, Docker stopped and started around
/// the change (through systemd on the image).
#[derive(Debug, Clone)]
pub struct BindEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The engine's configured data root (`/var/lib/docker`).
    data_root: PathBuf,
    /// The root between rentals (`/var/lib/p2pvps/docker`, on the state partition).
    fallback: PathBuf,
    stop: Vec<Vec<String>>,
    start: Vec<Vec<String>>,
    /// One change at a time.
    busy: Mutex<()>,
}

impl BindEngine {
    /// Docker under systemd: its socket unit too, or a client's connection would start it again
    /// on the old root.
    pub fn systemd(data_root: impl Into<PathBuf>, fallback: impl Into<PathBuf>) -> Self {
        let systemctl = |verb: &str, units: &[&str]| {
            std::iter::once("systemctl")
                .chain(std::iter::once(verb))
                .chain(units.iter().copied())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        Self::with_commands(
            data_root,
            fallback,
            vec![systemctl("stop", &["docker.socket", "docker.service"])],
            vec![systemctl("start", &["docker.service"])],
        )
    }

    /// With other stop and start commands (argument lists): for tests, and engines not run by systemd.
    pub fn with_commands(
        data_root: impl Into<PathBuf>,
        fallback: impl Into<PathBuf>,
        stop: Vec<Vec<String>>,
        start: Vec<Vec<String>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                data_root: data_root.into(),
                fallback: fallback.into(),
                stop,
                start,
                busy: Mutex::new(()),
            }),
        }
    }

    pub fn data_root(&self) -> &Path {
        &self.inner.data_root
    }

    /// Run the change on the blocking pool (it waits for the engine to stop and start).
    fn change(&self, root: Option<&Path>) -> EngineFuture<'static> {
        let inner = Arc::clone(&self.inner);
        let root = root.map(Path::to_owned);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let root = root.as_deref().unwrap_or(&inner.fallback);
                inner.attach_blocking(root)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        })
    }
}

impl Inner {
    fn attach_blocking(&self, root: &Path) -> Result<bool, EngineError> {
        let _busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !root.is_dir() {
            // A volume's root comes with its filesystem: missing, it is not mounted, and a root
            // made here would put the renter's layers on the state partition.
            if root != self.fallback {
                return Err(io(root, "use as the engine's data root")(
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            std::fs::create_dir_all(root).map_err(io(root, "create"))?;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o710))
                .map_err(io(root, "chmod"))?;
        }
        if same_dir(&self.data_root, root)? {
            debug!(root = %root.display(), "the engine's data root is in place");
            // Started, in case an earlier move failed after the bind.
            for command in &self.start {
                run(command)?;
            }
            return Ok(false);
        }
        info!(
            data_root = %self.data_root.display(),
            root = %root.display(),
            "moving the container engine's data root (the engine restarts)"
        );
        for command in &self.stop {
            run(command)?;
        }
        let target =
            std::fs::canonicalize(&self.data_root).map_err(io(&self.data_root, "resolve"))?;
        while is_mount_point(&target)? {
            run(&argv(&["umount", "--recursive"], &[&target]))?;
        }
        run(&argv(&["mount", "--bind"], &[root, &target]))?;
        for command in &self.start {
            run(command)?;
        }
        info!(root = %root.display(), "the container engine runs on its new data root");
        Ok(true)
    }
}

impl Engine for BindEngine {
    fn attach<'a>(&'a self, root: &'a Path) -> EngineFuture<'a> {
        self.change(Some(root))
    }

    fn detach(&self) -> EngineFuture<'_> {
        self.change(None)
    }

    fn fallback_free(&self) -> Option<u64> {
        crate::host::free_space(&self.inner.fallback)
    }
}

/// Whether `a` and `b` are the same directory (a bind mount shows its source's device and inode).
fn same_dir(a: &Path, b: &Path) -> Result<bool, EngineError> {
    let a = std::fs::metadata(a).map_err(io(a, "stat"))?;
    let b = std::fs::metadata(b).map_err(io(b, "stat"))?;
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

fn is_mount_point(path: &Path) -> Result<bool, EngineError> {
    let table = Path::new("/proc/self/mountinfo");
    let mounts = mountinfo::read(table).map_err(io(table, "read"))?;
    Ok(mounts.iter().any(|m| m.target == path))
}

fn argv(words: &[&str], paths: &[&Path]) -> Vec<String> {
    words
        .iter()
        .map(|w| (*w).to_owned())
        .chain(paths.iter().map(|p| p.display().to_string()))
        .collect()
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> EngineError + use<> {
    let path = path.to_owned();
    move |source| EngineError::Io {
        path,
        action,
        source,
    }
}

/// Run an argument list: its first word is the program.
fn run(words: &[String]) -> Result<(), EngineError> {
    if let Some((program, args)) = words.split_first() {
        command::run(program, args)?;
    }
    Ok(())
}

/// A recording engine for the lifecycle's tests: where the root is, and every restart.
#[derive(Debug, Default)]
pub struct FakeEngine {
    root: Mutex<Option<PathBuf>>,
    restarts: Mutex<Vec<Option<PathBuf>>>,
    free: Mutex<Option<u64>>,
}

impl FakeEngine {
    /// Say the fallback's filesystem has `bytes` free from now on.
    pub fn set_fallback_free(&self, bytes: u64) {
        *self.free.lock().unwrap() = Some(bytes);
    }

    /// The current root (None: the fallback).
    pub fn root(&self) -> Option<PathBuf> {
        self.root.lock().unwrap().clone()
    }

    /// The roots moved to, in order (None: the fallback).
    pub fn restarts(&self) -> Vec<Option<PathBuf>> {
        self.restarts.lock().unwrap().clone()
    }

    fn set(&self, root: Option<PathBuf>) -> bool {
        let mut current = self.root.lock().unwrap();
        if *current == root {
            return false;
        }
        current.clone_from(&root);
        self.restarts.lock().unwrap().push(root);
        true
    }
}

impl Engine for FakeEngine {
    fn attach<'a>(&'a self, root: &'a Path) -> EngineFuture<'a> {
        Box::pin(async move { Ok(self.set(Some(root.to_owned()))) })
    }

    fn detach(&self) -> EngineFuture<'_> {
        Box::pin(async move { Ok(self.set(None)) })
    }

    fn fallback_free(&self) -> Option<u64> {
        *self.free.lock().unwrap()
    }
}

impl<T: Engine> Engine for Arc<T> {
    fn attach<'a>(&'a self, root: &'a Path) -> EngineFuture<'a> {
        (**self).attach(root)
    }

    fn detach(&self) -> EngineFuture<'_> {
        (**self).detach()
    }

    fn fallback_free(&self) -> Option<u64> {
        (**self).fallback_free()
    }
}
