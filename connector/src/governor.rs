//! The governor's Unix socket, as seen from inside the container (`/run/p2pvps/governor.sock`):
//! one JSON object per line each way. The connector reports the renter's sessions and reads the
//! lease; the governor's side is `governor/src/socket.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tracing::debug;

/// Where the governor's socket is mounted in the renter's container.
pub const DEFAULT_SOCKET: &str = "/run/p2pvps/governor.sock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_from_sshd_monitor_processes() {
        let tmp = tempfile::tempdir().unwrap();
        let proc = |pid: &str, cmdline: &[u8]| {
            std::fs::create_dir_all(tmp.path().join(pid)).unwrap();
            std::fs::write(tmp.path().join(pid).join("cmdline"), cmdline).unwrap();
        };
        proc("1", b"/sbin/docker-init\0--\0p2pvps-connector\0serve\0");
        proc(
            "7",
            b"sshd: /usr/sbin/sshd -D -e [listener] 0 of 10-100 startups\0",
        );
        proc("20", b"sshd: alice [priv]\0");
        proc("21", b"sshd: alice@pts/0\0");
        proc("30", b"sshd: bob [priv]\0");
        proc("40", b"sshd: unknown [net]\0");
        std::fs::create_dir_all(tmp.path().join("self")).unwrap();
        assert_eq!(count_sessions(tmp.path()), 2);
        assert_eq!(count_sessions(&tmp.path().join("missing")), 0);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GovernorError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the governor closed the connection")]
    Closed { path: PathBuf },
    #[error("{path}: the governor refused: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("{path}: unusable answer: {reason}")]
    BadAnswer { path: PathBuf, reason: String },
}

/// One request, one answer line.
pub async fn ask(path: &Path, request: &Value) -> Result<Value, GovernorError> {
    let io = |source| GovernorError::Io {
        path: path.to_owned(),
        source,
    };
    let stream = UnixStream::connect(path).await.map_err(io)?;
    let (read, mut write) = stream.into_split();
    let mut line = request.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(io)?;
    let mut answer = String::new();
    if BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(io)?
        == 0
    {
        return Err(GovernorError::Closed {
            path: path.to_owned(),
        });
    }
    let value: Value = serde_json::from_str(&answer).map_err(|e| GovernorError::BadAnswer {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if value.get("ok") == Some(&Value::Bool(true)) {
        Ok(value)
    } else {
        Err(GovernorError::Refused {
            path: path.to_owned(),
            reason: value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_owned(),
        })
    }
}

/// Counts the renters' SSH sessions in the container every `interval` and tells the governor when
/// the number changes (its LED shows "renter connected").
pub async fn report_sessions(path: PathBuf, proc_dir: PathBuf, interval: Duration) {
    let mut reported = None;
    loop {
        let count = count_sessions(&proc_dir);
        if reported != Some(count) {
            match ask(&path, &json!({"op": "sessions", "count": count})).await {
                Ok(_) => reported = Some(count),
                Err(e) => debug!(error = %e, "cannot report the sessions to the governor"),
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// OpenSSH runs one privileged monitor process per logged-in connection, named `sshd: USER [priv]`
/// (the listener and connections still authenticating are named otherwise).
pub fn count_sessions(proc_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmd| {
            let cmd = String::from_utf8_lossy(cmd);
            cmd.starts_with("sshd: ") && cmd.trim_end_matches('\0').ends_with(" [priv]")
        })
        .count()
}
