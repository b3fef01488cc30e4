//! The renter container's writable layer on the rental's volume.
//!
//! The engine's data root stays on the state partition for good: the renter image is imported
//! there once, its read-only layers shared by every rental, and the engine is never restarted.
//! What a container writes goes to its writable layer: overlay2's (or fuse-overlayfs') `UpperDir`
//! and its `WorkDir`, which `docker inspect` names, in one directory of the data root (the layer's
//! home, with the driver's small files beside them). Before the renter's container starts, that
//! home is bind-mounted from the volume's `layer/home/` (one mount: overlayfs needs its upper and
//! work directories on the same mount, or a rename between them fails with EXDEV), its entries
//! mirrored there first: everything the renter writes anywhere in the container lands on the
//! encrypted volume and goes with its wipe. The files the engine would write for the container
//! under its data root and the container may rewrite (`/etc/hosts`, `/etc/hostname`,
//! `/etc/resolv.conf`) come from the layer's `etc/`, and the container's output is not logged
//! (`docker.rs`).
//!
//! A container is started only once its layer is checked to be the volume's (same device and
//! inode): a reboot drops the bind, and the stopped container waits for the volume to open.

use std::ffi::OsStr;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::RuntimeError;
use crate::command;
use crate::storage::mountinfo;

/// Where a container's writable layer lives under the engine's data root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDirs {
    /// The directory holding its `UpperDir` and `WorkDir`.
    pub home: PathBuf,
}

impl LayerDirs {
    /// From what `docker inspect` names; None unless both are in one directory.
    pub fn of(upper: &Path, work: &Path) -> Option<Self> {
        let home = upper.parent()?;
        (work.parent() == Some(home)).then(|| Self {
            home: home.to_owned(),
        })
    }
}

/// The files under the layer's `etc/` bound over the container's own, and where they go.
pub const ETC_FILES: [&str; 3] = ["hosts", "hostname", "resolv.conf"];

/// Write the layer's `etc/` files (kept if they exist: the renter may have changed them) for a
/// container named `hostname` using `dns`, owned by the container's root. Returns the bind
/// specifications (`host:container`).
pub fn prepare_etc(
    layer: &Path,
    hostname: &str,
    dns: &[IpAddr],
    owner: Option<(u32, u32)>,
    container: &str,
) -> Result<Vec<String>, RuntimeError> {
    let err = layer_err(container, "write the layer's etc files");
    let etc = layer.join("etc");
    std::fs::create_dir_all(&etc).map_err(|e| err(&etc, &e))?;
    // No resolvers known: the engine's own fallback (Google's public resolvers).
    let fallback = [
        "8.8.8.8".parse().expect("an address"),
        "8.8.4.4".parse().expect("an address"),
    ];
    let dns = if dns.is_empty() { &fallback[..] } else { dns };
    let resolvers = dns
        .iter()
        .map(|ip| format!("nameserver {ip}"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    let contents = [
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        ),
        format!("{hostname}\n"),
        resolvers,
    ];
    let mut binds = Vec::new();
    for (name, text) in ETC_FILES.iter().zip(contents) {
        let path = etc.join(name);
        if !path.exists() {
            std::fs::write(&path, text).map_err(|e| err(&path, &e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| err(&path, &e))?;
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| err(&path, &e))?;
        }
        binds.push(format!("{}:/etc/{name}", path.display()));
    }
    Ok(binds)
}

/// Bind the volume's `layer/home/` over the container's layer home, unless it is there: the
/// home's entries are mirrored first (directories made with the same owner and mode, the driver's
/// small files copied), so the engine finds what it wrote. Checked after the bind.
pub fn bind(dirs: &LayerDirs, layer: &Path, container: &str) -> Result<(), RuntimeError> {
    let err = layer_err(container, "bind its writable layer from the volume");
    if !layer.is_dir() {
        return Err(err(
            layer,
            &std::io::Error::other("not a directory: is the volume open?"),
        ));
    }
    let source = layer.join(HOME);
    if same_dir(&dirs.home, &source) {
        return Ok(());
    }
    unbind(dirs, container)?;
    mirror_dir(&dirs.home, &source).map_err(|(path, e)| err(&path, &e))?;
    let entries = std::fs::read_dir(&dirs.home).map_err(|e| err(&dirs.home, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| err(&dirs.home, &e))?;
        let (from, to) = (entry.path(), source.join(entry.file_name()));
        let kind = entry.file_type().map_err(|e| err(&from, &e))?;
        if kind.is_dir() {
            mirror_dir(&from, &to).map_err(|(path, e)| err(&path, &e))?;
        } else if kind.is_file() {
            std::fs::copy(&from, &to).map_err(|e| err(&to, &e))?;
            let meta = std::fs::metadata(&from).map_err(|e| err(&from, &e))?;
            std::os::unix::fs::chown(&to, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| err(&to, &e))?;
        }
    }
    command::run(
        "mount",
        [
            OsStr::new("--bind"),
            source.as_os_str(),
            dirs.home.as_os_str(),
        ],
    )
    .map_err(|e| RuntimeError::Container {
        container: container.to_owned(),
        action: "bind its writable layer from the volume",
        reason: e.to_string(),
    })?;
    if !is_bound(dirs, layer) {
        return Err(err(
            &dirs.home,
            &std::io::Error::other(format!("still not {} after the bind", source.display())),
        ));
    }
    Ok(())
}

/// Whether the container's layer home is the one in `layer`.
pub fn is_bound(dirs: &LayerDirs, layer: &Path) -> bool {
    same_dir(&dirs.home, &layer.join(HOME))
}

/// Take the volume's directory off the container's layer (nothing to do when not bound).
pub fn unbind(dirs: &LayerDirs, container: &str) -> Result<(), RuntimeError> {
    let table = Path::new("/proc/self/mountinfo");
    loop {
        let mounts = mountinfo::read(table)
            .map_err(|e| layer_err(container, "read the mount table")(table, &e))?;
        if !mounts.iter().any(|m| m.target == dirs.home) {
            return Ok(());
        }
        command::run("umount", [dirs.home.as_os_str()]).map_err(|e| RuntimeError::Container {
            container: container.to_owned(),
            action: "unbind its writable layer",
            reason: e.to_string(),
        })?;
    }
}

/// The layer's home inside the volume's layer directory.
const HOME: &str = "home";

/// Make `to` a directory (if missing) with `from`'s owner and mode.
fn mirror_dir(from: &Path, to: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    let meta = std::fs::metadata(from).map_err(|e| (from.to_owned(), e))?;
    if !to.is_dir() {
        std::fs::create_dir(to).map_err(|e| (to.to_owned(), e))?;
    }
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| (to.to_owned(), e))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| (to.to_owned(), e))
}

/// Same directory: a bind mount shows its source's device and inode.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn layer_err(
    container: &str,
    action: &'static str,
) -> impl Fn(&Path, &std::io::Error) -> RuntimeError + use<> {
    let container = container.to_owned();
    move |path, e| RuntimeError::Container {
        container: container.clone(),
        action,
        reason: format!("{}: {e}", path.display()),
    }
}
