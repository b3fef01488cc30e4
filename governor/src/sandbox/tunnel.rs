//! The reverse tunnel, kept on the host: the connector's tunnel keeper (`p2pvps-connector tunnel`)
//! runs as the governor's child, outside the renter's container, and forwards the endpoint's port
//! to the container's sshd on the renter's bridge. The tunnel's credential (the marketplace's shared
//! password, or the device's key) goes to that child's stdin only: never into the container's
//! files, environment, processes or socket, where the renter (root there) could read it.
//!
//! The lifecycle says which tunnel should run (`Hub::set_tunnel`); this task starts the keeper,
//! restarts it with backoff when it exits, hands it the rental's port when the device is rented
//! (the keeper logged in while the device was listed), replaces it when the settings change
//! otherwise (the container's new address) and stops it (SIGTERM: it says goodbye to the
//! endpoint, freeing the port) between rentals. The keeper's state lines (`--supervised`) go to the hub for `status`; its
//! stdin stays open while it is wanted, so it stops when the governor dies, however it dies.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::socket::{Hub, TunnelReport, TunnelSettings, parse_report};
use p2pvps_common::Backoff;

/// Where the packages install the connector on the host (the `.deb` and the image).
pub const INSTALLED_CONNECTOR: &str = "/usr/lib/p2pvps/p2pvps-connector";
/// The connector's exit status for settings it cannot use.
const EX_CONFIG: i32 = 78;
/// How long the container's sshd may take to listen before the tunnel starts anyway.
const SSHD_WAIT: Duration = Duration::from_secs(30);
/// How long the keeper may take to close its session before it is killed.
const GOODBYE: Duration = Duration::from_secs(3);

/// The device's tunnel key, made on its first start with `sshKey: "generate"`.
pub const GENERATED_KEY: &str = "keys/tunnel_ed25519";
/// The public half of the key in use, in the state dir, for `status`.
pub const PUBLIC_KEY_FILE: &str = "tunnel-key.pub";

#[derive(Debug, thiserror::Error)]
pub enum TunnelKeyError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Command(#[from] crate::command::CommandError),
}

/// An OpenSSH private key's text. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(String);

impl PrivateKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(…)")
    }
}

/// The device's key file for `sshKey`: the owner's file, or the one made in `state_dir`.
pub fn key_path(state_dir: &Path, key: &crate::config::SshKey) -> PathBuf {
    match key {
        crate::config::SshKey::Generate => state_dir.join(GENERATED_KEY),
        crate::config::SshKey::File(p) => p.clone(),
    }
}

/// The device's tunnel key, made first when it is to be generated and is not there yet (an
/// ed25519 key, 0600 in a 0700 directory, commented with the device id): its private half, and the
/// public line the marketplace's operator authorizes.
pub fn device_key(
    state_dir: &Path,
    key: &crate::config::SshKey,
    device: &str,
) -> Result<(PrivateKey, String), TunnelKeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = key_path(state_dir, key);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| TunnelKeyError::Io {
            path,
            action,
            source,
        }
    };
    if *key == crate::config::SshKey::Generate && !path.exists() {
        let dir = path.parent().expect("the key is in a directory");
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("chmod", dir))?;
        let comment = format!("p2pvps-{device}");
        crate::command::run(
            "ssh-keygen",
            [
                "-q".as_ref(),
                "-t".as_ref(),
                "ed25519".as_ref(),
                "-N".as_ref(),
                "".as_ref(),
                "-C".as_ref(),
                comment.as_ref(),
                "-f".as_ref(),
                path.as_os_str(),
            ],
        )?;
        info!(key = %path.display(), "tunnel key made: give its public half (`p2pvps-governor status`) to the marketplace's operator");
    }
    let private = std::fs::read_to_string(&path).map_err(io("read", &path))?;
    let public = public_key(&path)?;
    let shown = state_dir.join(PUBLIC_KEY_FILE);
    if std::fs::read_to_string(&shown).ok().as_deref() != Some(&format!("{public}\n")) {
        std::fs::write(&shown, format!("{public}\n")).map_err(io("write", &shown))?;
    }
    Ok((PrivateKey(private), public))
}

/// The public line of the private key at `path` (`ssh-keygen -y`).
pub fn public_key(path: &Path) -> Result<String, TunnelKeyError> {
    let public = crate::command::run(
        "ssh-keygen",
        ["-y".as_ref(), "-f".as_ref(), path.as_os_str()],
    )?;
    Ok(public.trim().to_owned())
}

/// The connector binary: beside the governor's own (a build tree), else where the packages put it.
pub fn default_connector() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("p2pvps-connector"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| INSTALLED_CONNECTOR.into())
}

/// Keep the tunnel the hub names, until the task is dropped (spawn it).
pub async fn keep(program: PathBuf, hub: Hub) {
    let mut wanted = hub.tunnel_changes();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let settings = wanted.borrow_and_update().clone();
        let Some(settings) = settings else {
            if wanted.changed().await.is_err() {
                return;
            }
            continue;
        };
        let started = tokio::time::Instant::now();
        let why = match run_once(&program, &settings, &hub, &mut wanted).await {
            Ended::Replaced => continue,
            Ended::Exited(why) => why,
            Ended::Refused(why) => {
                error!(error = %why, "the tunnel's settings are refused; fix sshServer, sshUser, sshPassword or sshKey in device-config.json");
                hub.record(TunnelReport {
                    state: "down".into(),
                    error: Some(why),
                    reported_at: Utc::now(),
                    sessions: 0,
                });
                if wanted.changed().await.is_err() {
                    return;
                }
                continue;
            }
        };
        if started.elapsed() > Duration::from_mins(1) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        warn!(error = %why, retry_in = ?delay, "the tunnel keeper stopped; starting it again");
        hub.record(TunnelReport {
            state: "down".into(),
            error: Some(why),
            reported_at: Utc::now(),
            sessions: 0,
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            r = wanted.changed() => if r.is_err() { return },
        }
    }
}

enum Ended {
    /// The settings changed (or the rental ended): the keeper was stopped on purpose.
    Replaced,
    /// The keeper refused its settings (EX_CONFIG): no restart helps until they change.
    Refused(String),
    /// The keeper exited (or could not start) by itself.
    Exited(String),
}

async fn run_once(
    program: &Path,
    settings: &TunnelSettings,
    hub: &Hub,
    wanted: &mut watch::Receiver<Option<TunnelSettings>>,
) -> Ended {
    // A tunnel up before the container's sshd listens would hand the first renter a reset.
    tokio::select! {
        () = wait_listening(settings.local) => {}
        _ = wanted.changed() => return Ended::Replaced,
    }
    let mut child = match Command::new(program)
        .args(["tunnel", "--settings", "-", "--supervised"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Ended::Exited(format!("cannot start {}: {e}", program.display())),
    };
    info!(pid = child.id().unwrap_or(0), endpoint = %format!("{}:{}", settings.endpoint.server, settings.endpoint.server_port),
        port = ?settings.remote_port, to = %settings.local, "tunnel keeper started on the host");
    // The settings as one line; stdin then stays open as long as this keeper is wanted: its end
    // (this governor gone, even killed) stops the keeper.
    let Some(mut stdin) = child.stdin.take() else {
        stop(&mut child).await;
        return Ended::Exited("no stdin to the tunnel keeper".into());
    };
    let line = format!("{}\n", settings.to_wire());
    if let Err(e) = stdin.write_all(line.as_bytes()).await {
        stop(&mut child).await;
        return Ended::Exited(format!("cannot hand over the tunnel settings: {e}"));
    }
    let Some(stdout) = child.stdout.take() else {
        stop(&mut child).await;
        return Ended::Exited("no stdout from the tunnel keeper".into());
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut current = settings.clone();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    match serde_json::from_str(&line).map_err(|e| e.to_string()).and_then(|v| parse_report(Some(&v))) {
                        Ok(report) => hub.record(report),
                        Err(e) => warn!(error = %e, "unreadable state line from the tunnel keeper"),
                    }
                }
                Ok(None) | Err(_) => {
                    return match child.wait().await {
                        Ok(s) if s.code() == Some(EX_CONFIG) => Ended::Refused(format!("the tunnel keeper refused its settings ({s}); its log says why")),
                        Ok(s) => Ended::Exited(format!("the tunnel keeper exited ({s})")),
                        Err(e) => Ended::Exited(format!("the tunnel keeper: {e}")),
                    };
                }
            },
            _ = wanted.changed() => {
                // The rental's port for the keeper that logged in before the device was listed:
                // one line, and the forward is one request away.
                let next = wanted.borrow().clone();
                if let Some(next) = next.filter(|n| n.adds_port_to(&current)) {
                    let line = format!("{}\n", serde_json::json!({"remotePort": next.remote_port}));
                    if stdin.write_all(line.as_bytes()).await.is_ok() {
                        info!(port = ?next.remote_port, "the tunnel keeper forwards the rental's port");
                        current = next;
                        continue;
                    }
                }
                stop(&mut child).await;
                return Ended::Replaced;
            }
        }
    }
}

/// Until something accepts connections at `addr` (the container's sshd), or [`SSHD_WAIT`] passed
/// (the keeper then starts anyway: sshd may be slow, and its restarts are the connector's).
async fn wait_listening(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + SSHD_WAIT;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    warn!(%addr, "the renter container's sshd does not answer yet; starting the tunnel anyway");
}

/// SIGTERM, so the keeper closes its session (the endpoint frees the port at once); SIGKILL after
/// [`GOODBYE`].
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = crate::command::run("kill", ["-TERM", &pid.to_string()]);
    }
    if tokio::time::timeout(GOODBYE, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}
