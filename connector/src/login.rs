//! `p2pvps-connector add-login`: the renter's login, made in the container by one command that the
//! governor runs (each `docker exec` costs seconds on a Pi, and the login is what a renter who just
//! bought the device waits for). It reads `USER:HASH` (a SHA-512-crypt hash, never a password) on
//! stdin, then runs useradd, chpasswd and chown with argument lists, never a shell. Repeating it is
//! fine: an existing user keeps their files and gets the password again.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Where the renter's storage is mounted in the container.
const STORAGE: &str = "/media/storage";

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("stdin: expected one line USER:HASH")]
    Input,
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Make the login from `line` (`USER:HASH`): the user (with a home, bash and sudo), their password
/// hash, and the storage theirs (left as it is when read-only: a locked volume's placeholder).
pub fn add_login(line: &str) -> Result<(), LoginError> {
    let line = line.trim_end_matches('\n');
    let (user, hash) = line.split_once(':').ok_or(LoginError::Input)?;
    // useradd checks the name again; this only keeps what could be read as an option or another
    // field out.
    if user.is_empty() || user.starts_with('-') || hash.is_empty() || line.contains(['\n', '\r']) {
        return Err(LoginError::Input);
    }
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

    #[test]
    fn malformed_input_is_refused_before_any_command() {
        for bad in ["", "nouser", ":$6$hash", "-o:$6$hash", "user:", "a:b\nc:d"] {
            assert!(matches!(add_login(bad), Err(LoginError::Input)), "{bad:?}");
        }
    }
}
