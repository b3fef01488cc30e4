//! `p2pvps-connector add-login`: the renter's login, made in the container by one command that the
//! governor runs (each `docker exec` costs seconds on a Pi, and the login is what a renter who just
//! bought the device waits for). It reads `USER:HASH` (a SHA-512-crypt hash, never a password) and
//! then the lease (one line of JSON, as the governor's socket gives it) on stdin, saves the lease
//! (so the first login's banner names the end), then runs useradd, chpasswd and chown with argument
//! lists, never a shell. Repeating it is fine: an existing user keeps their files and gets the
//! password again.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::notices::{self, Lease};

/// Where the renter's storage is mounted in the container.
const STORAGE: &str = "/media/storage";

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("stdin: expected USER:HASH, then the lease as one line of JSON")]
    Input,
    #[error("cannot save the lease in {path}: {source}")]
    Lease {
        path: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Make the login from `input` (`USER:HASH`, then the lease): the lease saved in `lease_file`, the
/// user (with a home, bash and sudo), their password hash, and the storage theirs (left as it is
/// when read-only: a locked volume's placeholder).
pub fn add_login(input: &str, lease_file: &Path) -> Result<(), LoginError> {
    if input.contains('\r') {
        return Err(LoginError::Input);
    }
    let mut lines = input.lines();
    let line = lines.next().unwrap_or_default();
    let lease = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .and_then(|v| Lease::from_wire(&v))
        .ok_or(LoginError::Input)?;
    let (user, hash) = line.split_once(':').ok_or(LoginError::Input)?;
    // useradd checks the name again; this only keeps what could be read as an option or another
    // field out.
    if user.is_empty() || user.starts_with('-') || hash.is_empty() || lines.next().is_some() {
        return Err(LoginError::Input);
    }
    notices::save(lease_file, &lease).map_err(|source| LoginError::Lease {
        path: lease_file.display().to_string(),
        source,
    })?;
    match run(
        "useradd",
        &[
            "--create-home",
            "--shell",
            "/bin/bash",
            "--groups",
            "sudo",
            "--",
            user,
        ],
        None,
    ) {
        // 9: the name is taken (a login made before an interruption).
        Err(LoginError::Command { status, .. }) if status == "exit status: 9" => {}
        other => other?,
    }
    run(
        "chpasswd",
        &["--encrypted"],
        Some(format!("{user}:{hash}\n").as_bytes()),
    )?;
    match run("chown", &["--", &format!("{user}:{user}"), STORAGE], None) {
        Err(LoginError::Command { stderr, .. }) if stderr.contains("Read-only file system") => {
            Ok(())
        }
        other => other,
    }
}

fn run(program: &str, args: &[&str], input: Option<&[u8]>) -> Result<(), LoginError> {
    let fail = |status: String, stderr: String| LoginError::Command {
        command: format!("{program} {}", args.join(" ")),
        status,
        stderr,
    };
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail("not started".into(), e.to_string()))?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(data)
            .map_err(|e| fail("stdin".into(), e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail("wait".into(), e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(
            out.status.to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: &str = r#"{"expiration":"2030-01-02T03:04:05Z","notices":[600]}"#;

    #[test]
    fn malformed_input_is_refused_before_any_command() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("lease.json");
        let with_lease = |login: &str| format!("{login}\n{LEASE}\n");
        for bad in [
            String::new(),
            with_lease("nouser"),
            with_lease(":$6$hash"),
            with_lease("-o:$6$hash"),
            with_lease("user:"),
            with_lease("a:b\r"),
            "a:$6$hash\n".to_owned(),
            "a:$6$hash\nc:d\n".to_owned(),
            "a:$6$hash\n{\"expiration\":\"soon\",\"notices\":[]}\n".to_owned(),
            format!("{}c:d\n", with_lease("a:$6$hash")),
        ] {
            assert!(
                matches!(add_login(&bad, &file), Err(LoginError::Input)),
                "{bad:?}"
            );
            assert!(!file.exists(), "lease saved from bad input {bad:?}");
        }
    }
}
