//! A client for QEMU's human monitor (HMP) on a unix socket: one command at a time, answered up to the
//! next `(qemu) ` prompt.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

const PROMPT: &str = "(qemu) ";

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot connect to the QEMU monitor {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("QEMU monitor {path}, command `{command}`: {source}")]
    Io {
        path: PathBuf,
        command: String,
        source: io::Error,
    },
    #[error("QEMU monitor {path} closed during `{command}`; it said: {output}")]
    Closed {
        path: PathBuf,
        command: String,
        output: String,
    },
    #[error("monitor command `{command}` must be one line")]
    BadCommand { command: String },
}

pub struct Monitor {
    path: PathBuf,
    stream: UnixStream,
}

impl Monitor {
    /// Connects, retrying while QEMU starts (it creates the socket early, but not instantly), and reads
    /// the greeting up to the first prompt.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, MonitorError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(source) if Instant::now() >= deadline => {
                    return Err(MonitorError::Connect {
                        path: path.to_owned(),
                        source,
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|source| MonitorError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let mut monitor = Self {
            path: path.to_owned(),
            stream,
        };
        monitor.read_to_prompt("(greeting)")?;
        Ok(monitor)
    }

    /// Runs one command and returns what QEMU printed for it, without the echo of the command,
    /// terminal escapes or the prompt. Most commands print nothing on success.
    pub fn command(&mut self, command: &str) -> Result<String, MonitorError> {
        if command.contains(['\n', '\r']) {
            return Err(MonitorError::BadCommand {
                command: command.to_owned(),
            });
        }
        self.stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(|source| self.io_error(command, source))?;
        let raw = self.read_to_prompt(command)?;
        Ok(clean_output(&raw, command))
    }

    fn io_error(&self, command: &str, source: io::Error) -> MonitorError {
        MonitorError::Io {
            path: self.path.clone(),
            command: command.to_owned(),
            source,
        }
    }

    fn read_to_prompt(&mut self, command: &str) -> Result<String, MonitorError> {
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self
                .stream
                .read(&mut buf)
                .map_err(|source| self.io_error(command, source))?;
            if n == 0 {
                return Err(MonitorError::Closed {
                    path: self.path.clone(),
                    command: command.to_owned(),
                    output: String::from_utf8_lossy(&raw).into_owned(),
                });
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.ends_with(PROMPT.as_bytes()) {
                raw.truncate(raw.len() - PROMPT.len());
                return Ok(String::from_utf8_lossy(&raw).into_owned());
            }
        }
    }
}

/// Drops ANSI escape sequences (the monitor's line editor redraws with them), carriage returns and the
/// echoed command line.
fn clean_output(raw: &str, command: &str) -> String {
    let mut text = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters… final byte in @..~
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => text.push(c),
        }
    }
    let body = match text.split_once('\n') {
        Some((first, rest)) if first.trim_end().ends_with(command) => rest,
        _ => text.as_str(),
    };
    body.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::clean_output;

    #[test]
    fn echo_escapes_and_prompt_are_dropped() {
        let raw = "drive_add 0 if=none,id=d\u{1b}[K\r\nOK\r\n";
        assert_eq!(clean_output(raw, "drive_add 0 if=none,id=d"), "OK");
        assert_eq!(clean_output("device_del x\r\n", "device_del x"), "");
        assert_eq!(
            clean_output("Error: boom\r\n", "device_add y"),
            "Error: boom"
        );
    }
}
