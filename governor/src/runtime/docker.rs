//! The Docker engine through bollard, over its Unix socket (`DOCKER_HOST` or the default).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::layer::{self, LayerDirs};
use super::{
    AUDIT_WRITE, ContainerRuntime, ContainerSpec, DEVICE_LABEL, DROPPED_CAPABILITIES, RuntimeError,
    STORAGE_MOUNT, bridge_name,
};
use crate::socket::LeaseNotice;
use crate::types::{PasswordHash, Username};

/// The renter container's host name.
const HOSTNAME: &str = "p2pvps";
/// Kept from an exec's output for the error message.
const STDERR_KEEP: usize = 2048;

#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// The host uid and gid of the containers' root when the engine remaps it (`userns-remap`).
    remapped_root: Option<(u32, u32)>,
    /// The engine's data root (`docker info`), on the host.
    root_dir: PathBuf,
}

impl DockerRuntime {
    /// Connect and agree on an API version (bookworm's engine speaks 1.41, bollard defaults newer).
    pub async fn connect() -> Result<Self, RuntimeError> {
        let docker =
            Docker::connect_with_defaults().map_err(|e| RuntimeError::Connect(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| RuntimeError::Connect(e.to_string()))?;
        let info = docker
            .info()
            .await
            .map_err(|e| RuntimeError::Connect(e.to_string()))?;
        let root_dir = info.docker_root_dir.unwrap_or_default();
        let remapped_root = remapped_root(&info.security_options.unwrap_or_default(), &root_dir)?;
        Ok(Self {
            docker,
            remapped_root,
            root_dir: root_dir.into(),
        })
    }

    /// The engine's data root on the host (under a remap, the remapped root's part of it). Mounts
    /// of the volume below it are the governor's: the renter container's layer (`layer.rs`).
    pub fn root_dir(&self) -> &Path {
        &self.root_dir
    }

    /// The container's writable layer under the data root, as `docker inspect` names it.
    async fn layer_dirs(&self, id: &str) -> Result<LayerDirs, RuntimeError> {
        let info = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(container_err(id, "inspect"))?;
        let driver = info.graph_driver.unwrap_or_default();
        let dir = |key: &str| {
            driver
                .data
                .get(key)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        };
        match (dir("UpperDir"), dir("WorkDir")) {
            (Some(upper), Some(work)) => {
                LayerDirs::of(&upper, &work).ok_or_else(|| RuntimeError::Container {
                    container: id.to_owned(),
                    action: "find its writable layer",
                    reason: format!(
                        "its UpperDir {} and WorkDir {} are not in one directory",
                        upper.display(),
                        work.display()
                    ),
                })
            }
            _ => Err(RuntimeError::Container {
                container: id.to_owned(),
                action: "find its writable layer",
                reason: format!(
                    "the engine's storage driver {:?} names no UpperDir and WorkDir: the renter's \
                     writes could not go to the volume (use overlay2)",
                    driver.name
                ),
            }),
        }
    }

    /// The host uid and gid that the containers' root is, when the engine runs them in a user
    /// namespace (`userns-remap`); `None` when their root is the host's root.
    pub fn remapped_root(&self) -> Option<(u32, u32)> {
        self.remapped_root
    }

    /// Under a remap, the root of the renter's storage must belong to the container's root: to the
    /// container, a directory of the host's root is `nobody`'s, and its root could neither write
    /// nor chown it. A placeholder (read-only, while the volume is locked) is left as it is.
    fn own_storage(&self, storage: &Path, container: &str) -> Result<(), RuntimeError> {
        use std::os::unix::fs::MetadataExt as _;
        let Some((uid, gid)) = self.remapped_root else {
            return Ok(());
        };
        let err = |e: std::io::Error| RuntimeError::Container {
            container: container.to_owned(),
            action: "create",
            reason: format!("giving {} to the remapped root: {e}", storage.display()),
        };
        let meta = std::fs::metadata(storage).map_err(err)?;
        if meta.uid() != 0 {
            return Ok(());
        }
        match std::os::unix::fs::chown(storage, Some(uid), Some(gid)) {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(()),
            other => other.map_err(err),
        }
    }

    /// Run `cmd` as root in the container, feeding `stdin`, and fail unless it exits 0.
    async fn exec(&self, id: &str, cmd: &[&str], stdin: Option<&[u8]>) -> Result<(), RuntimeError> {
        let command = cmd.join(" ");
        let err = |reason: String| RuntimeError::Container {
            container: id.to_owned(),
            action: "exec",
            reason: format!("`{command}`: {reason}"),
        };
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdin: Some(stdin.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    user: Some("root"),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| err(e.to_string()))?;
        let started = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| err(e.to_string()))?;
        let StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Err(err("exec started detached".into()));
        };
        if let Some(data) = stdin {
            input
                .write_all(data)
                .await
                .map_err(|e| err(e.to_string()))?;
            // Half-close so the command sees end of input.
            input.shutdown().await.map_err(|e| err(e.to_string()))?;
        }
        let mut stderr = Vec::new();
        while let Some(item) = output.next().await {
            match item.map_err(|e| err(e.to_string()))? {
                bollard::container::LogOutput::StdErr { message }
                | bollard::container::LogOutput::StdOut { message }
                    if stderr.len() < STDERR_KEEP =>
                {
                    stderr.extend_from_slice(&message);
                }
                _ => {}
            }
        }
        // The exit code can lag the end of the stream by a moment.
        for _ in 0..50 {
            let info = self
                .docker
                .inspect_exec(&exec.id)
                .await
                .map_err(|e| err(e.to_string()))?;
            match (info.running, info.exit_code) {
                (Some(false), Some(0)) => return Ok(()),
                (Some(false), Some(code)) => {
                    return Err(RuntimeError::Exec {
                        container: id.to_owned(),
                        command,
                        code,
                        stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        Err(err("no exit code after the output ended".into()))
    }

    async fn import(&self, image: &str, tar: &Path) -> Result<(), RuntimeError> {
        let tar_err = |source| RuntimeError::ImageTar {
            image: image.to_owned(),
            path: tar.to_owned(),
            source,
        };
        let file = tokio::fs::File::open(tar).await.map_err(tar_err)?;
        let total = file.metadata().await.map_err(tar_err)?.len();
        let (repo, tag) = split_reference(image);
        let started = std::time::Instant::now();
        // Progress in the journal every few seconds: an import from an SD card takes minutes.
        let reading = (file, 0u64, started);
        let chunks =
            futures_util::stream::unfold(reading, move |(mut file, done, mut logged)| async move {
                let mut buf = vec![0u8; 1 << 20];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        let done = done + n as u64;
                        if logged.elapsed() >= IMPORT_PROGRESS_EVERY {
                            tracing::info!(
                                "importing the renter image: {}",
                                import_progress(done, total)
                            );
                            logged = std::time::Instant::now();
                        }
                        Some((Ok(bytes::Bytes::from(buf)), (file, done, logged)))
                    }
                    Err(e) => Some((Err(e), (file, done, logged))),
                }
            });
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        // bollard's default of 120 s per request bounds the whole upload: an emulated board on a
        // loaded host, or a Pi reading a slow card, needs longer (progress is logged meanwhile).
        let docker = self.docker.clone().with_timeout(IMPORT_TIMEOUT);
        let mut progress =
            docker.create_image(Some(options), Some(bollard::body_try_stream(chunks)), None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| RuntimeError::Image {
                image: image.to_owned(),
                reason: format!("import from {}: {e}", tar.display()),
            })?;
        }
        tracing::info!(
            image,
            seconds = started.elapsed().as_secs(),
            "renter image imported: {}",
            import_progress(total, total)
        );
        Ok(())
    }
}

/// The containers' root on the host, from what `docker info` says: with a remap the security
/// options name `userns` and the engine keeps its data in `<data-root>/<uid>.<gid>`.
fn remapped_root(
    security_options: &[String],
    root_dir: &str,
) -> Result<Option<(u32, u32)>, RuntimeError> {
    if !security_options.iter().any(|o| o.contains("name=userns")) {
        return Ok(None);
    }
    let last = Path::new(root_dir)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let parsed = last
        .split_once('.')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
    match parsed {
        Some(ids) => Ok(Some(ids)),
        None => Err(RuntimeError::Connect(format!(
            "the engine remaps users (userns-remap) but its data root {root_dir:?} does not end in \
             <uid>.<gid>: a Docker this governor does not know"
        ))),
    }
}

const IMPORT_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// The renter image's import as one request: an hour, against the minutes it takes on a Pi.
const IMPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_hours(1);

/// "120 of 400 MiB (30%)".
fn import_progress(done: u64, total: u64) -> String {
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    format!("{} of {} MiB ({pct}%)", done >> 20, total >> 20)
}

/// `repo[:tag]` split as Docker does: a colon after the last slash starts the tag.
fn split_reference(image: &str) -> (&str, &str) {
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => (&image[..i], &image[i + 1..]),
        _ => (image, "latest"),
    }
}

fn not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn container_err(id: &str, action: &'static str) -> impl FnOnce(BollardError) -> RuntimeError {
    let container = id.to_owned();
    move |e| RuntimeError::Container {
        container,
        action,
        reason: e.to_string(),
    }
}

/// The bridge network option that names its Linux interface.
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

impl ContainerRuntime for DockerRuntime {
    async fn ensure_network(&self, name: &str) -> Result<String, RuntimeError> {
        let err = |action: &str, e: BollardError| RuntimeError::Network {
            network: name.to_owned(),
            reason: format!("{action}: {e}"),
        };
        let found = match self.docker.inspect_network(name, None).await {
            Ok(n) => n,
            Err(e) if not_found(&e) => {
                let request = NetworkCreateRequest {
                    name: name.to_owned(),
                    driver: Some("bridge".into()),
                    options: Some(HashMap::from([
                        (BRIDGE_NAME_OPTION.to_owned(), bridge_name(name)),
                        // The renter's container is alone there; nothing to talk to.
                        (
                            "com.docker.network.bridge.enable_icc".to_owned(),
                            "false".to_owned(),
                        ),
                    ])),
                    ..Default::default()
                };
                self.docker
                    .create_network(request)
                    .await
                    .map_err(|e| err("create", e))?;
                tracing::info!(network = name, "renter network created");
                self.docker
                    .inspect_network(name, None)
                    .await
                    .map_err(|e| err("inspect", e))?
            }
            Err(e) => return Err(err("inspect", e)),
        };
        if found.driver.as_deref() != Some("bridge") {
            return Err(RuntimeError::Network {
                network: name.to_owned(),
                reason: format!(
                    "driver {:?}: the renter's network must be a bridge of its own",
                    found.driver.unwrap_or_default()
                ),
            });
        }
        let named = found
            .options
            .as_ref()
            .and_then(|o| o.get(BRIDGE_NAME_OPTION).cloned());
        // A bridge network made without the option: Docker names it br-<first 12 of its id>.
        let id = found.id.unwrap_or_default();
        Ok(named.unwrap_or_else(|| format!("br-{}", &id[..id.len().min(12)])))
    }

    async fn ensure_image(&self, image: &str, tar: Option<&Path>) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(RuntimeError::Connect(e.to_string())),
        }
        let Some(tar) = tar else {
            return Err(RuntimeError::Image {
                image: image.to_owned(),
                reason: "not in the engine, and no renterImageTar to import it from".into(),
            });
        };
        tracing::info!(image, tar = %tar.display(), "importing the renter image");
        self.import(image, tar).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.own_storage(&spec.storage, &spec.name)?;
        let mut cap_drop = DROPPED_CAPABILITIES.map(str::to_owned).to_vec();
        if self.remapped_root.is_some() {
            // In a user namespace the kernel answers audit messages with "no audit here", which
            // sshd accepts: the capability serves nothing there.
            cap_drop.push(AUDIT_WRITE.to_owned());
        }
        // A slave of the host's mount: a volume the renter unlocks later still reaches the container.
        let propagation = if spec.storage_propagation {
            ":rslave"
        } else {
            ""
        };
        let mut binds = vec![format!(
            "{}:{STORAGE_MOUNT}{propagation}",
            spec.storage.display()
        )];
        if let Some(dir) = &spec.socket_dir {
            binds.push(format!(
                "{}:{}:ro",
                dir.display(),
                crate::socket::CONTAINER_DIR
            ));
        }
        if let Some(dir) = &spec.layer {
            binds.extend(layer::prepare_etc(
                dir,
                HOSTNAME,
                &spec.dns,
                self.remapped_root,
                &spec.name,
            )?);
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            hostname: Some(HOSTNAME.into()),
            labels: Some(HashMap::from([(
                DEVICE_LABEL.to_owned(),
                spec.device.clone(),
            )])),
            host_config: Some(HostConfig {
                binds: Some(binds),
                memory: Some(spec.limits.memory_bytes),
                // No swap beyond the memory limit: swap on an SD card would wear it out.
                memory_swap: Some(spec.limits.memory_bytes),
                nano_cpus: Some(spec.limits.nano_cpus),
                pids_limit: Some(spec.limits.pids),
                privileged: Some(false),
                cap_drop: Some(cap_drop),
                // An init as PID 1 reaps zombies and passes SIGTERM on.
                init: Some(true),
                network_mode: Some(spec.network.clone()),
                dns: (!spec.dns.is_empty())
                    .then(|| spec.dns.iter().map(ToString::to_string).collect()),
                // The engine's log is under its data root, on the state partition, and the renter
                // can write to the container's output: none is kept.
                log_config: Some(HostConfigLogConfig {
                    typ: Some("none".into()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(container_err(&spec.name, "create"))?;
        Ok(created.id)
    }

    async fn add_login(
        &self,
        id: &str,
        user: &Username,
        hash: &PasswordHash,
        lease: &LeaseNotice,
    ) -> Result<(), RuntimeError> {
        // One exec (each costs seconds on a Pi): the connector in the image saves the lease, makes
        // the user, sets the hash and gives them the storage, from two lines on its stdin.
        let input = format!("{}:{}\n{}\n", user.as_str(), hash.as_str(), lease.to_wire());
        self.exec(id, &[super::CONNECTOR, "add-login"], Some(input.as_bytes()))
            .await
    }

    async fn state(&self, id: &str) -> Result<Option<bool>, RuntimeError> {
        match self.docker.inspect_container(id, None).await {
            Ok(info) => Ok(Some(info.state.and_then(|s| s.running).unwrap_or(false))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(container_err(id, "inspect")(e)),
        }
    }

    async fn address(
        &self,
        id: &str,
        network: &str,
    ) -> Result<Option<std::net::IpAddr>, RuntimeError> {
        let info = match self.docker.inspect_container(id, None).await {
            Ok(info) => info,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(container_err(id, "inspect")(e)),
        };
        let ip = info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|n| n.ip_address)
            .filter(|ip| !ip.is_empty());
        ip.map(|ip| {
            ip.parse().map_err(|e| RuntimeError::Container {
                container: id.to_owned(),
                action: "inspect",
                reason: format!("address {ip:?} on {network}: {e}"),
            })
        })
        .transpose()
    }

    async fn start(&self, id: &str, layer: Option<&Path>) -> Result<(), RuntimeError> {
        if let Some(dir) = layer {
            let dirs = self.layer_dirs(id).await?;
            let (owned, name) = (dir.to_owned(), id.to_owned());
            tokio::task::spawn_blocking(move || {
                layer::bind(&dirs, &owned, &name)?;
                if layer::is_bound(&dirs, &owned) {
                    Ok(())
                } else {
                    Err(RuntimeError::Container {
                        container: name,
                        action: "start",
                        reason: format!("its writable layer is not {}", owned.display()),
                    })
                }
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            tracing::info!(container = id, layer = %dir.display(), "the container's writable layer is on the renter's volume");
        }
        self.docker
            .start_container(id, None)
            .await
            .map_err(container_err(id, "start"))
    }

    async fn remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let stop = StopContainerOptions {
            t: Some(i32::try_from(grace.as_secs()).unwrap_or(10)),
            ..Default::default()
        };
        match self.docker.stop_container(id, Some(stop)).await {
            // 304: already stopped.
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) if not_found(&e) => return Ok(()),
            Err(e) => return Err(container_err(id, "stop")(e)),
        }
        // The volume's directories come off first: the engine would delete the renter's files
        // through them (the wipe takes them at once), and the volume must be free to unmount.
        let dirs = self.layer_dirs(id).await;
        if let Ok(dirs) = dirs {
            let name = id.to_owned();
            tokio::task::spawn_blocking(move || layer::unbind(&dirs, &name))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        }
        let rm = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(rm)).await {
            Err(e) if !not_found(&e) => Err(container_err(id, "remove")(e)),
            _ => Ok(()),
        }
    }

    async fn serves_logins(&self, id: &str, network: &str) -> bool {
        let Ok(Some(ip)) = self.address(id, network).await else {
            return false;
        };
        let connect = tokio::net::TcpStream::connect((ip, 22));
        matches!(
            tokio::time::timeout(Duration::from_secs(1), connect).await,
            Ok(Ok(_))
        )
    }

    fn root_free(&self) -> Option<u64> {
        crate::host::free_space(&self.root_dir)
    }

    async fn list(&self, device: &str) -> Result<Vec<String>, RuntimeError> {
        let filters =
            HashMap::from([("label".to_owned(), vec![format!("{DEVICE_LABEL}={device}")])]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| RuntimeError::Connect(e.to_string()))?;
        Ok(found.into_iter().filter_map(|c| c.id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::{import_progress, remapped_root, split_reference};

    #[test]
    fn the_remapped_root_comes_from_the_data_root_under_userns() {
        let userns = vec![
            "name=seccomp,profile=builtin".to_owned(),
            "name=userns".to_owned(),
        ];
        assert_eq!(
            remapped_root(&userns, "/var/lib/docker/100000.100000").unwrap(),
            Some((100_000, 100_000))
        );
        assert_eq!(
            remapped_root(&userns, "/srv/d/231072.231073").unwrap(),
            Some((231_072, 231_073))
        );
        let err = remapped_root(&userns, "/var/lib/docker").unwrap_err();
        assert!(err.to_string().contains("userns-remap"), "{err}");
        // No remap: the data root is whatever it is.
        let plain = vec!["name=seccomp,profile=builtin".to_owned()];
        assert_eq!(remapped_root(&plain, "/var/lib/docker").unwrap(), None);
        assert_eq!(remapped_root(&plain, "/data/1.2").unwrap(), None);
    }

    #[test]
    fn import_progress_reads_as_mib_and_percent() {
        assert_eq!(
            import_progress(120 << 20, 400 << 20),
            "120 of 400 MiB (30%)"
        );
        assert_eq!(import_progress(0, 0), "0 of 0 MiB (100%)");
    }

    #[test]
    fn references_split_like_docker() {
        assert_eq!(
            split_reference("p2pvps/renter:latest"),
            ("p2pvps/renter", "latest")
        );
        assert_eq!(
            split_reference("p2pvps/renter"),
            ("p2pvps/renter", "latest")
        );
        assert_eq!(
            split_reference("host:5000/renter"),
            ("host:5000/renter", "latest")
        );
        assert_eq!(
            split_reference("host:5000/renter:v2"),
            ("host:5000/renter", "v2")
        );
    }
}
