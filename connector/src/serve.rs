//! `p2pvps-connector serve`: the renter container's main process (under Docker's init, which reaps
//! zombies and forwards SIGTERM). It makes the container's SSH host keys on first start (never baked
//! into the image), keeps sshd running, reports the renter's sessions to the governor, and tells
//! the renter when the rental ends (`notices`). The tunnel is not here: the governor runs it on the
//! host, so its credential is never in the renter's reach (DESIGN.md §9).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{governor, notices};
use p2pvps_common::Backoff;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The governor's socket.
    pub socket: PathBuf,
    /// The sshd binary.
    pub sshd: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("`{command}`: {reason}")]
    Command { command: String, reason: String },
}

/// Run until `shutdown` completes.
pub async fn serve(
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    host_keys().await?;
    std::fs::create_dir_all("/run/sshd").map_err(|e| ServeError::Command {
        command: "mkdir /run/sshd".into(),
        reason: e.to_string(),
    })?;
    login_records();
    let (stop_tx, stop_rx) = watch::channel(false);
    let sshd = tokio::spawn(keep_sshd(opts.sshd.clone(), stop_rx.clone()));
    let sessions = tokio::spawn(governor::report_sessions(
        opts.socket.clone(),
        "/proc".into(),
        Duration::from_secs(2),
    ));
    let notices = tokio::spawn(notices::keep(
        opts.socket.clone(),
        notices::LEASE_FILE.into(),
    ));
    shutdown.await;
    info!("stopping");
    stop_tx.send_replace(true);
    let _ = sshd.await;
    sessions.abort();
    notices.abort();
    Ok(())
}

/// /run/utmp, where sshd records the renter's terminals (systemd-tmpfiles makes it on a full
/// system; nothing does in a container): `wall` finds the sessions to tell there.
fn login_records() {
    use std::os::unix::fs::PermissionsExt as _;
    let path = Path::new("/run/utmp");
    if path.exists() {
        return;
    }
    let made = std::fs::File::create(path)
        .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o664)));
    if let Err(e) = made {
        warn!(error = %e, "cannot create /run/utmp: renters will not see reminders on their terminals");
    }
}

/// Fresh host keys per container, Ed25519 and ECDSA (what every OpenSSH client of the last decade
/// uses): an RSA key takes tens of seconds to make on an emulated or a small Pi, and the container is
/// made while the device waits to be listed. sshd passes over the RSA key it does not find.
async fn host_keys() -> Result<(), ServeError> {
    for kind in ["ed25519", "ecdsa"] {
        let path = format!("/etc/ssh/ssh_host_{kind}_key");
        if std::path::Path::new(&path).exists() {
            continue;
        }
        let command = format!("ssh-keygen -q -N '' -t {kind} -f {path}");
        let out = Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t", kind, "-f", &path])
            .output()
            .await
            .map_err(|e| ServeError::Command {
                command: command.clone(),
                reason: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(ServeError::Command {
                command,
                reason: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
    }
    Ok(())
}

/// sshd in the foreground, restarted with backoff if it dies, stopped when `stop` turns true.
async fn keep_sshd(sshd: PathBuf, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        if *stop.borrow() {
            return;
        }
        let started = tokio::time::Instant::now();
        let mut child = match spawn_sshd(&sshd) {
            Ok(c) => c,
            Err(e) => {
                error!(sshd = %sshd.display(), error = %e, "cannot start sshd");
                sleep_or_stop(backoff.next_delay(), &mut stop).await;
                continue;
            }
        };
        info!(pid = child.id().unwrap_or(0), "sshd started");
        let status = tokio::select! {
            status = child.wait() => status,
            () = stopped(&mut stop) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return;
            }
        };
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        warn!(status = ?status, retry_in = ?delay, "sshd exited; starting it again");
        sleep_or_stop(delay, &mut stop).await;
    }
}

fn spawn_sshd(sshd: &Path) -> std::io::Result<tokio::process::Child> {
    // -D: stay in the foreground (we supervise it); -e: log to stderr, i.e. the container log.
    Command::new(sshd)
        .args(["-D", "-e"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = stopped(stop) => {}
    }
}

/// Completes once `stop` is true (the watch guard is dropped inside, keeping callers `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
