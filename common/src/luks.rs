//! The wire of `p2pvps-luks`, the governor's LUKS2 helper: a short-lived process that alone links
//! libcryptsetup (and OpenSSL under it), so the long-running governor carries neither, nor the
//! key derivation's memory. One operation per run:
//!
//! ```text
//! p2pvps-luks has-header DEVICE             -> "yes" | "no"
//! p2pvps-luks format DEVICE                 stdin: KEY
//! p2pvps-luks activate DEVICE NAME          stdin: KEY           -> the keyslot opened
//! p2pvps-luks check-key DEVICE              stdin: KEY           -> the keyslot opened
//! p2pvps-luks deactivate NAME
//! p2pvps-luks set-passphrase DEVICE KDF     stdin: KEY NEW       (KDF: benchmarked | fast)
//! p2pvps-luks destroy-slot DEVICE SLOT
//! p2pvps-luks active-slots DEVICE           -> slots, space-separated
//! p2pvps-luks erase DEVICE                  -> the header's size in bytes | "none"
//! ```
//!
//! Keys and passphrases travel only on stdin, one per line, in hex (any byte, no line end inside):
//! never in argv, the environment or a file. Exit 0 with the answer on stdout; exit 1 when
//! libcryptsetup failed, with `errno N` on stdout (0: none) and the reason on stderr; exit 2 for a
//! malformed request.

/// The keyslot of the device key.
pub const DEVICE_SLOT: u32 = 0;
/// The keyslot of the renter's passphrase.
pub const RENTER_SLOT: u32 = 1;

/// Exit status: libcryptsetup refused or failed (stdout has the errno line).
pub const EXIT_FAILED: i32 = 1;
/// Exit status: the request itself was malformed.
pub const EXIT_USAGE: i32 = 2;

/// The prefix of the failure's errno line.
pub const ERRNO_PREFIX: &str = "errno ";

/// How the renter's passphrase is stretched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassphraseKdf {
    /// argon2id, with the costs libcryptsetup benchmarks on this machine (about 2 s).
    #[default]
    Benchmarked,
    /// argon2id with 32 MiB and 4 iterations, no benchmark: tests only (a VM under emulation takes
    /// half a minute for the benchmark alone).
    Fast,
}

impl PassphraseKdf {
    /// Its name on the helper's command line.
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Benchmarked => "benchmarked",
            Self::Fast => "fast",
        }
    }

    pub fn from_arg(arg: &str) -> Option<Self> {
        match arg {
            "benchmarked" => Some(Self::Benchmarked),
            "fast" => Some(Self::Fast),
            _ => None,
        }
    }
}

/// The answer of `has-header`.
pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdf_names_round_trip() {
        for kdf in [PassphraseKdf::Benchmarked, PassphraseKdf::Fast] {
            assert_eq!(PassphraseKdf::from_arg(kdf.as_arg()), Some(kdf));
        }
        assert_eq!(PassphraseKdf::from_arg("argon2"), None);
    }
}
