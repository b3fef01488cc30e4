//! The container runtime behind a narrow trait: Docker through bollard, and an in-memory fake.

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::socket::LeaseNotice;
use crate::types::{PasswordHash, Username};

pub mod docker;
pub mod fake;
pub mod layer;

pub use docker::DockerRuntime;
pub use fake::FakeRuntime;

/// Label carrying the device id on every renter container, to find our own (and orphans).
pub const DEVICE_LABEL: &str = "io.p2pvps.device";
/// The connector in the renter image: the container's main process, and what makes the login.
pub const CONNECTOR: &str = "/usr/local/bin/p2pvps-connector";
/// Where the renter's storage appears inside the container.
pub const STORAGE_MOUNT: &str = "/media/storage";
/// Docker's default capabilities that the renter's container does without (DESIGN.md §9): raw
/// sockets (spoofing, sniffing; `ping` uses ICMP datagram sockets instead), device nodes, file
/// capabilities, and changing capability sets. What is left serves sshd, sudo, useradd, apt and
/// the deployment packages. [`AUDIT_WRITE`] stays when the container's root is the host's: Debian's
/// sshd ends every terminal login whose audit record the kernel refuses with EPERM (it accepts only
/// "no audit here"), and sudo warns.
pub const DROPPED_CAPABILITIES: [&str; 4] = ["NET_RAW", "MKNOD", "SETFCAP", "SETPCAP"];
/// Dropped too when the engine runs the container in a user namespace (`userns-remap`).
pub const AUDIT_WRITE: &str = "AUDIT_WRITE";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container engine unreachable: {0}")]
    Connect(String),
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },
    #[error("image {image}: cannot read {path}: {source}")]
    ImageTar {
        image: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network {network}: {reason}")]
    Network { network: String, reason: String },
    #[error("container {container}: {action}: {reason}")]
    Container {
        container: String,
        action: &'static str,
        reason: String,
    },
    #[error("container {container}: `{command}` exited with {code}: {stderr}")]
    Exec {
        container: String,
        command: String,
        code: i64,
        stderr: String,
    },
}

/// Resource limits that leave the host its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids: i64,
}

impl Limits {
    /// For a host with this much memory and these many CPUs: the renter gets memory less a quarter
    /// (at least 256 MiB kept back) and all CPUs but half of one.
    pub fn for_host(total_memory: u64, cpus: usize) -> Self {
        const MIB: u64 = 1 << 20;
        let keep = (total_memory / 4).max(256 * MIB);
        let memory = total_memory.saturating_sub(keep).max(128 * MIB);
        let cpus = i64::try_from(cpus.max(1)).unwrap_or(1);
        Self {
            memory_bytes: i64::try_from(memory).unwrap_or(i64::MAX),
            nano_cpus: (cpus * 1_000_000_000 - 500_000_000).max(500_000_000),
            pids: 1024,
        }
    }
}

/// What a renter's container is made of.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// The command the container runs (the governor decides, not the image's CMD).
    pub cmd: Vec<String>,
    /// Value of [`DEVICE_LABEL`].
    pub device: String,
    /// Host path bind-mounted at [`STORAGE_MOUNT`].
    pub storage: PathBuf,
    /// Bind the storage as a mount-propagation slave (the host path is under a shared mount and a
    /// volume may be mounted there after the container starts).
    pub storage_propagation: bool,
    /// Host directory with the governor's socket, bind-mounted read-only at `/run/p2pvps` (the
    /// renter connects to the socket but can neither replace it nor fill the directory).
    pub socket_dir: Option<PathBuf>,
    /// Docker network to attach to: the renter's own ([`ContainerRuntime::ensure_network`]).
    pub network: String,
    /// The resolvers the container's names go to (the host's upstreams, which the network rules
    /// let through); empty: the engine's choice, which falls back to public resolvers when the
    /// host's resolv.conf names only a local stub (systemd-resolved's).
    pub dns: Vec<IpAddr>,
    pub limits: Limits,
    /// The directory on the rental's volume that holds the container's writable layer and the
    /// files the engine would write for it (`layer.rs`); None: under the engine's data root (the
    /// stand-in of a locked volume, a storage without a volume of its own).
    pub layer: Option<PathBuf>,
}

pub trait ContainerRuntime: Send + Sync {
    /// Make sure the bridge network `name` exists (created with a bridge interface named after
    /// it); returns the name of its Linux bridge, which the sandbox's rules match.
    fn ensure_network(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Make sure `image` exists, importing it from the rootfs tarball `tar` when absent.
    fn ensure_image(
        &self,
        image: &str,
        tar: Option<&Path>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Create a container (not started); returns its id.
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Create the renter's login (with sudo) from a password hash given on stdin, and give them
    /// the storage mount; the lease (for the login banner and `p2pvps-lease`) is saved first, so
    /// it is there for the first login.
    fn add_login(
        &self,
        id: &str,
        user: &Username,
        hash: &PasswordHash,
        lease: &LeaseNotice,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Some(running?) for an existing container, None when it is gone.
    fn state(&self, id: &str) -> impl Future<Output = Result<Option<bool>, RuntimeError>> + Send;

    /// The container's address on `network` (where the host-side tunnel sends renters), while it
    /// runs.
    fn address(
        &self,
        id: &str,
        network: &str,
    ) -> impl Future<Output = Result<Option<IpAddr>, RuntimeError>> + Send;

    /// Start a container. With `layer` (its [`ContainerSpec::layer`]), its writable layer is bound
    /// from there first, and it does not start unless that holds.
    fn start(
        &self,
        id: &str,
        layer: Option<&Path>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Stop (SIGTERM, then SIGKILL after `grace`), take its layer off the volume, and remove. A
    /// container already gone is fine.
    fn remove(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Ids of all containers (running or not) labelled with this device.
    fn list(&self, device: &str) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send;

    /// Whether the container's sshd accepts connections on its address on `network` (it makes
    /// its host keys first, seconds under emulation).
    fn serves_logins(&self, _id: &str, _network: &str) -> impl Future<Output = bool> + Send {
        async { true }
    }

    /// Bytes free where the engine keeps what a container without a layer of the volume writes
    /// (its data root, on the state partition). None: not known.
    fn root_free(&self) -> Option<u64> {
        None
    }
}

/// Shared ownership (a test keeps a handle on the fake the lifecycle uses).
impl<T: ContainerRuntime> ContainerRuntime for std::sync::Arc<T> {
    fn ensure_network(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send {
        (**self).ensure_network(name)
    }
    fn ensure_image(
        &self,
        image: &str,
        tar: Option<&Path>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        (**self).ensure_image(image, tar)
    }
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send {
        (**self).create(spec)
    }
    fn add_login(
        &self,
        id: &str,
        user: &Username,
        hash: &PasswordHash,
        lease: &LeaseNotice,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        (**self).add_login(id, user, hash, lease)
    }
    fn state(&self, id: &str) -> impl Future<Output = Result<Option<bool>, RuntimeError>> + Send {
        (**self).state(id)
    }
    fn address(
        &self,
        id: &str,
        network: &str,
    ) -> impl Future<Output = Result<Option<IpAddr>, RuntimeError>> + Send {
        (**self).address(id, network)
    }
    fn start(
        &self,
        id: &str,
        layer: Option<&Path>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        (**self).start(id, layer)
    }
    fn remove(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        (**self).remove(id, grace)
    }
    fn list(&self, device: &str) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send {
        (**self).list(device)
    }
    fn serves_logins(&self, id: &str, network: &str) -> impl Future<Output = bool> + Send {
        (**self).serves_logins(id, network)
    }
    fn root_free(&self) -> Option<u64> {
        (**self).root_free()
    }
}

/// The bridge interface a network made by the governor gets: its name and `0`, cut to the 15
/// characters an interface name may have.
pub fn bridge_name(network: &str) -> String {
    let base: String = network.chars().take(14).collect();
    format!("{base}0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_an_interface_name() {
        assert_eq!(bridge_name("p2pvps"), "p2pvps0");
        assert_eq!(bridge_name("p2pvps-t-0123456789ab").len(), 15);
    }

    #[test]
    fn limits_leave_the_host_its_share() {
        let gib = 1u64 << 30;
        let pi4 = Limits::for_host(4 * gib, 4);
        assert_eq!(pi4.memory_bytes, i64::try_from(3 * gib).unwrap());
        assert_eq!(pi4.nano_cpus, 3_500_000_000);
        let small = Limits::for_host(512 << 20, 1);
        assert_eq!(small.memory_bytes, 256 << 20);
        assert_eq!(small.nano_cpus, 500_000_000);
        assert_eq!(small.pids, 1024);
    }
}
