//! `p2pvps-storage`: the renter's control of the storage encryption key, through the governor's
//! socket. `status` says who holds the key and whether the volume is locked; `set-passphrase` puts
//! the key in the renter's hands (the device's own key is then destroyed); `unlock` opens the volume
//! after a reboot.
//!
//! Passphrases are read from the terminal without echo (or, with `--stdin`, one per line from
//! standard input, for scripts): never from the command line or the environment, where other
//! processes and shell histories can read them.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::governor::{self, GovernorError};

#[derive(Debug, Args)]
pub struct StorageArgs {
    /// The governor's socket.
    #[arg(long, default_value = governor::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Read passphrases from standard input, one per line, instead of the terminal.
    #[arg(long, global = true)]
    pub stdin: bool,
    #[command(subcommand)]
    pub command: StorageCommand,
}

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Whether the storage is encrypted, who holds its key, and whether it is locked.
    Status {
        /// Print the governor's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set (or change) your passphrase; the device's own key is destroyed, so only you can open
    /// the storage after a reboot.
    SetPassphrase,
    /// Open the storage after a reboot with your passphrase.
    Unlock,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageCliError {
    #[error(transparent)]
    Governor(#[from] GovernorError),
    #[error("cannot read the passphrase: {0}")]
    Read(std::io::Error),
    #[error("the two passphrases differ; nothing was changed")]
    Mismatch,
    #[error("no passphrase given")]
    Empty,
}

/// Run the command; returns what to print.
pub async fn run(args: StorageArgs) -> Result<String, StorageCliError> {
    let mut input = Passphrases::new(args.stdin);
    match args.command {
        StorageCommand::Status { json } => {
            let status = status(&args.socket).await?;
            Ok(if json {
                status.to_string()
            } else {
                describe(&status)
            })
        }
        StorageCommand::SetPassphrase => {
            let status = status(&args.socket).await?;
            let mut request = json!({"op": "storage-set-passphrase"});
            if status.get("holder").and_then(Value::as_str) == Some("renter") {
                request["old"] = Value::String(input.read("Current passphrase: ")?);
            }
            let new = input.read("New passphrase (8 characters or more): ")?;
            if input.read("New passphrase again: ")? != new {
                return Err(StorageCliError::Mismatch);
            }
            request["passphrase"] = Value::String(new);
            governor::ask(&args.socket, &request).await?;
            Ok(
                "Passphrase set. Only your passphrase opens the storage now: after a reboot of \
                the device, run `sudo p2pvps-storage unlock`. If you lose it, the data is lost."
                    .into(),
            )
        }
        StorageCommand::Unlock => {
            let passphrase = input.read("Passphrase: ")?;
            let answer = governor::ask(
                &args.socket,
                &json!({"op": "storage-unlock", "passphrase": passphrase}),
            )
            .await?;
            Ok(unlocked_message(&answer).into())
        }
    }
}

/// What the renter is told after an unlock. Where the engine keeps containers on the volume, the
/// renter is in a stand-in container until then: their own one replaces it, ending the session.
fn unlocked_message(answer: &Value) -> &'static str {
    if answer.get("restarts").and_then(Value::as_bool) == Some(true) {
        "Storage unlocked. Your own container (its files are on the encrypted storage too) now \
         replaces this temporary one: this session ends in a few seconds; log in again."
    } else {
        "Storage unlocked: /media/storage is yours again."
    }
}

async fn status(socket: &Path) -> Result<Value, StorageCliError> {
    let answer = governor::ask(socket, &json!({"op": "storage-status"})).await?;
    Ok(answer.get("storage").cloned().unwrap_or(Value::Null))
}

/// The status for a person.
pub fn describe(status: &Value) -> String {
    if status.get("encrypted") != Some(&Value::Bool(true)) {
        return "Storage: NOT encrypted on this device (its owner turned encryption off, or its \
                kernel cannot encrypt). It is wiped at the end of your rental."
            .into();
    }
    let key = match status.get("holder").and_then(Value::as_str) {
        Some("renter") => {
            "Key: held by you (your passphrase); after a reboot the storage stays locked until you \
             run `sudo p2pvps-storage unlock`"
        }
        _ => {
            "Key: held by the device (it opens by itself after a reboot); run \
             `sudo p2pvps-storage set-passphrase` to hold it yourself"
        }
    };
    let state = if status.get("locked") == Some(&Value::Bool(true)) {
        "State: LOCKED: /media/storage is read-only and empty until you run \
         `sudo p2pvps-storage unlock`"
    } else {
        "State: unlocked, mounted at /media/storage"
    };
    format!("Storage: encrypted (LUKS2)\n{key}\n{state}")
}

/// Where passphrases come from: the terminal (no echo) or stdin lines.
struct Passphrases {
    stdin: bool,
}

impl Passphrases {
    fn new(stdin: bool) -> Self {
        Self { stdin }
    }

    fn read(&mut self, prompt: &str) -> Result<String, StorageCliError> {
        let line = if self.stdin {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(StorageCliError::Read)?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        } else {
            rpassword::prompt_password(prompt).map_err(StorageCliError::Read)?
        };
        if line.is_empty() {
            return Err(StorageCliError::Empty);
        }
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unlock_that_restarts_the_container_says_the_session_ends() {
        let restarts = unlocked_message(&json!({"ok": true, "restarts": true}));
        assert!(restarts.contains("this session ends"), "{restarts}");
        let stays = unlocked_message(&json!({"ok": true, "restarts": false}));
        assert!(stays.contains("yours again"), "{stays}");
        assert_eq!(unlocked_message(&json!({"ok": true})), stays);
    }

    #[test]
    fn status_reads_as_sentences() {
        let plain = describe(&json!({"encrypted": false, "holder": "none", "locked": false}));
        assert!(plain.contains("NOT encrypted"), "{plain}");
        let device = describe(&json!({"encrypted": true, "holder": "device", "locked": false}));
        assert!(device.contains("held by the device"), "{device}");
        assert!(device.contains("unlocked"), "{device}");
        let locked = describe(&json!({"encrypted": true, "holder": "renter", "locked": true}));
        assert!(locked.contains("held by you"), "{locked}");
        assert!(locked.contains("LOCKED"), "{locked}");
    }
}
