//! LUKS2 on the volume's partition, through the helper `p2pvps-luks` (crate `luks/`): one
//! short-lived process per operation. libcryptsetup, OpenSSL under it and the argon2 key
//! derivation's memory live and die with the helper, not in this long-running daemon (they were
//! 2.3 MiB of its resident memory on x86-64 and over 8 MiB on the Pi's aarch64). Keys and
//! passphrases go to the helper on its stdin, in hex (the wire: `p2pvps_common::luks`).
//!
//! Keyslot [`DEVICE_SLOT`] holds the device key (random, kept in the state dir, see `keys.rs`);
//! the renter's passphrase goes in [`RENTER_SLOT`]. There is no "erase" operation in
//! libcryptsetup: [`Luks::erase`] destroys every keyslot, then the caller overwrites the whole
//! header area, so the volume key is gone from the disk and the data left on it is noise.
//!
//! The calls block: they run on tokio's blocking pool.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use p2pvps_common::luks::{DEVICE_SLOT, PassphraseKdf, RENTER_SLOT};
use p2pvps_common::luks::{ERRNO_PREFIX, EXIT_FAILED};

/// Where packages and the image install the helper.
pub const INSTALLED_HELPER: &str = "/usr/lib/p2pvps/p2pvps-luks";

#[derive(Debug, thiserror::Error)]
#[error("{device}: {action}: {message}")]
pub struct LuksError {
    pub device: PathBuf,
    pub action: &'static str,
    /// The helper's reason (libcryptsetup's error), or why the helper could not run.
    pub message: String,
    errno: Option<i32>,
}

impl LuksError {
    /// libcryptsetup's errno, when the failure carries one.
    pub fn errno(&self) -> Option<i32> {
        self.errno
    }

    /// The key or passphrase given opens no keyslot (EPERM), or no keyslot is left (ENOENT).
    pub fn is_wrong_key(&self) -> bool {
        matches!(self.errno, Some(libc::EPERM | libc::ENOENT))
    }
}

/// The helper that does the LUKS2 work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Luks {
    helper: PathBuf,
}

impl Default for Luks {
    fn default() -> Self {
        Self::installed()
    }
}

impl Luks {
    pub fn new(helper: impl Into<PathBuf>) -> Self {
        Self {
            helper: helper.into(),
        }
    }

    /// The helper beside this program (a build tree, the VM tests), else the installed one.
    pub fn installed() -> Self {
        let beside = std::env::current_exe()
            .ok()
            .map(|exe| exe.with_file_name("p2pvps-luks"))
            .filter(|p| p.is_file());
        Self::new(beside.unwrap_or_else(|| INSTALLED_HELPER.into()))
    }

    pub fn helper(&self) -> &Path {
        &self.helper
    }

    /// Whether `device` starts with a LUKS2 header libcryptsetup can read.
    pub fn has_header(&self, device: &Path) -> Result<bool, LuksError> {
        let answer = self.call(
            device,
            "read the LUKS2 header",
            &[&"has-header", &device],
            &[],
        )?;
        Ok(answer == "yes")
    }

    /// Format `device` as LUKS2 (aes-xts-plain64, a fresh random volume key) with `device_key` in
    /// [`DEVICE_SLOT`].
    pub fn format(&self, device: &Path, device_key: &[u8]) -> Result<(), LuksError> {
        self.call(device, "format LUKS2", &[&"format", &device], &[device_key])
            .map(drop)
    }

    /// Map `device` as `/dev/mapper/<name>` with a key or passphrase; returns the keyslot it opened.
    pub fn activate(&self, device: &Path, name: &str, key: &[u8]) -> Result<u32, LuksError> {
        let slot = self.call(device, "unlock", &[&"activate", &device, &name], &[key])?;
        parse_slot(device, "unlock", &slot)
    }

    /// The keyslot `key` opens, without mapping anything.
    pub fn check_key(&self, device: &Path, key: &[u8]) -> Result<u32, LuksError> {
        let slot = self.call(device, "check the key", &[&"check-key", &device], &[key])?;
        parse_slot(device, "check the key", &slot)
    }

    /// Remove `/dev/mapper/<name>` (its filesystem must be unmounted). Nothing to do if it is absent.
    pub fn deactivate(&self, name: &str) -> Result<(), LuksError> {
        if !is_active(name) {
            return Ok(());
        }
        let path = Path::new("/dev/mapper").join(name);
        self.call(&path, "close", &[&"deactivate", &name], &[])
            .map(drop)
    }

    /// Put `passphrase` in [`RENTER_SLOT`] (replacing what was there), unlocking with `existing` (the
    /// device key or the current passphrase).
    pub fn set_renter_passphrase(
        &self,
        device: &Path,
        existing: &[u8],
        passphrase: &[u8],
        kdf: PassphraseKdf,
    ) -> Result<(), LuksError> {
        self.call(
            device,
            "set the passphrase",
            &[&"set-passphrase", &device, &kdf.as_arg()],
            &[existing, passphrase],
        )
        .map(drop)
    }

    /// Destroy keyslot `slot` if it is in use.
    pub fn destroy_slot(&self, device: &Path, slot: u32) -> Result<(), LuksError> {
        self.call(
            device,
            "destroy a keyslot",
            &[&"destroy-slot", &device, &slot.to_string()],
            &[],
        )
        .map(drop)
    }

    /// The keyslots in use.
    pub fn active_slots(&self, device: &Path) -> Result<Vec<u32>, LuksError> {
        let slots = self.call(
            device,
            "list the keyslots",
            &[&"active-slots", &device],
            &[],
        )?;
        slots
            .split_whitespace()
            .map(|s| parse_slot(device, "list the keyslots", s))
            .collect()
    }

    /// Destroy every keyslot of the header on `device`; returns the header's size in bytes (where
    /// the encrypted data starts), which the caller then overwrites. `None` when there is no
    /// readable header (already erased).
    pub fn erase(&self, device: &Path) -> Result<Option<u64>, LuksError> {
        let answer = self.call(device, "erase the keyslots", &[&"erase", &device], &[])?;
        if answer == "none" {
            return Ok(None);
        }
        answer.parse().map(Some).map_err(|_| LuksError {
            device: device.to_owned(),
            action: "erase the keyslots",
            message: format!("the helper answered {answer:?}, not a size"),
            errno: None,
        })
    }

    /// Run the helper with `args`, the `secrets` on its stdin; its answer (trimmed).
    fn call(
        &self,
        device: &Path,
        action: &'static str,
        args: &[&dyn AsRefOsStr],
        secrets: &[&[u8]],
    ) -> Result<String, LuksError> {
        let fail = |message: String, errno: Option<i32>| LuksError {
            device: device.to_owned(),
            action,
            message,
            errno,
        };
        let mut child = Command::new(&self.helper)
            .args(args.iter().map(|a| a.os()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                fail(
                    format!(
                        "cannot run the LUKS helper {}: {e} (it is installed with the governor; reinstall the package or image)",
                        self.helper.display()
                    ),
                    None,
                )
            })?;
        let mut input = String::new();
        for secret in secrets {
            input.push_str(&hex::encode(secret));
            input.push('\n');
        }
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A helper that exits before reading (a malformed request) closes the pipe: its status
        // and stderr say why, so a failed write is not the error to report.
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|e| fail(format!("the LUKS helper did not finish: {e}"), None))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr
            .trim()
            .strip_prefix("p2pvps-luks: ")
            .unwrap_or(stderr.trim())
            .to_owned();
        let errno = (out.status.code() == Some(EXIT_FAILED))
            .then(|| stdout.strip_prefix(ERRNO_PREFIX)?.parse().ok())
            .flatten()
            .filter(|&n| n != 0);
        let message = if out.status.code() == Some(EXIT_FAILED) {
            reason
        } else {
            format!("{reason} (the helper's {})", out.status)
        };
        Err(fail(message, errno))
    }
}

/// Arguments: paths and strings alike.
trait AsRefOsStr {
    fn os(&self) -> &std::ffi::OsStr;
}

impl<T: AsRef<std::ffi::OsStr> + ?Sized> AsRefOsStr for T {
    fn os(&self) -> &std::ffi::OsStr {
        self.as_ref()
    }
}

fn parse_slot(device: &Path, action: &'static str, s: &str) -> Result<u32, LuksError> {
    s.parse().map_err(|_| LuksError {
        device: device.to_owned(),
        action,
        message: format!("the helper answered {s:?}, not a keyslot"),
        errno: None,
    })
}

/// Whether `/dev/mapper/<name>` exists: a device-mapper device of that name, as the kernel lists
/// them in sysfs (no helper needed, and no udev: the VM tests have none).
pub fn is_active(name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("dm/name")).is_ok_and(|n| n.trim_end() == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_helper_is_named_with_what_to_do() {
        let luks = Luks::new("/nonexistent/p2pvps-luks");
        let e = luks.format(Path::new("/dev/sdz1"), &[1; 64]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "/dev/sdz1: format LUKS2: cannot run the LUKS helper /nonexistent/p2pvps-luks"
            ),
            "{text}"
        );
        assert!(text.contains("reinstall"), "{text}");
        assert!(!e.is_wrong_key());
    }

    #[test]
    fn the_helpers_errno_and_reason_come_back() {
        // A stand-in helper that fails as the real one does for a wrong key.
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("p2pvps-luks");
        std::fs::write(
            &helper,
            "#!/bin/sh\ncat >/dev/null\necho 'errno 1'\necho 'p2pvps-luks: unlock: Operation not permitted' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let e = Luks::new(&helper)
            .activate(Path::new("/dev/x"), "v", b"wrong")
            .unwrap_err();
        assert!(e.is_wrong_key(), "{e}");
        assert_eq!(
            e.to_string(),
            "/dev/x: unlock: unlock: Operation not permitted"
        );
    }

    #[test]
    fn no_mapper_device_of_a_name_never_used() {
        assert!(!is_active("p2pvps-no-such-volume"));
    }
}
