//! LUKS2 on the volume's partition, through libcryptsetup (libcryptsetup-rs): format with a random
//! volume key, keyslots, activation, and the crypto-erase.
//!
//! Keyslot 0 holds the device key (random, kept in the state dir, see `keys.rs`); the renter's
//! passphrase goes in slot 1. The device key is 64 random bytes, so its slot uses PBKDF2 with the
//! fewest iterations libcryptsetup allows: a slow KDF protects guessable passphrases, not random keys,
//! and this keeps `prepare` and every reboot fast on a Pi. The renter's slot uses argon2id with
//! libcryptsetup's benchmarked defaults (or cheap fixed costs in tests: [`PassphraseKdf::Fast`]).
//!
//! There is no "erase" call in libcryptsetup: [`erase`] destroys every keyslot, then the caller
//! overwrites the whole header area (binary headers, JSON areas, keyslot areas), so the volume key
//! is gone from the disk and the data left on it is noise.
//!
//! Every function opens its own `CryptDevice` and drops it before returning: they run on tokio's
//! blocking pool, on any thread (the crate's `mutex` feature serialises the library calls).

use std::path::{Path, PathBuf};

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptDeactivate, CryptPbkdf, CryptVolumeKey};
use libcryptsetup_rs::consts::vals::{CryptKdf, CryptStatusInfo, EncryptionFormat, KeyslotInfo};
use libcryptsetup_rs::{
    CryptDevice, CryptInit, CryptParamsLuks2, CryptParamsLuks2Ref, CryptPbkdfType, Either,
    LibcryptErr,
};

/// The keyslot of the device key.
pub const DEVICE_SLOT: u32 = 0;
/// The keyslot of the renter's passphrase.
pub const RENTER_SLOT: u32 = 1;
/// LUKS2 has 32 keyslots.
const MAX_SLOTS: u32 = 32;
/// AES-256 in XTS mode takes two 256-bit keys.
const VOLUME_KEY_BYTES: usize = 64;
/// The LUKS2 label, shown by `cryptsetup luksDump` and blkid.
const LABEL: &str = "p2pvps";

#[derive(Debug, thiserror::Error)]
#[error("{device}: {action}: {source}")]
pub struct LuksError {
    pub device: PathBuf,
    pub action: &'static str,
    #[source]
    pub source: LibcryptErr,
}

impl LuksError {
    /// libcryptsetup's errno, when the failure carries one.
    pub fn errno(&self) -> Option<i32> {
        match &self.source {
            LibcryptErr::IOError(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// The key or passphrase given opens no keyslot (EPERM), or no keyslot is left (ENOENT).
    pub fn is_wrong_key(&self) -> bool {
        matches!(self.errno(), Some(libc::EPERM | libc::ENOENT))
    }
}

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
    fn pbkdf(self) -> Option<CryptPbkdfType> {
        match self {
            Self::Benchmarked => None,
            Self::Fast => Some(CryptPbkdfType {
                type_: CryptKdf::Argon2Id,
                hash: Some("sha256".into()),
                time_ms: 0,
                iterations: 4,
                max_memory_kb: 32 * 1024,
                parallel_threads: 1,
                flags: CryptPbkdf::NO_BENCHMARK,
            }),
        }
    }
}

fn device_pbkdf() -> CryptPbkdfType {
    CryptPbkdfType {
        type_: CryptKdf::Pbkdf2,
        hash: Some("sha256".into()),
        time_ms: 0,
        iterations: 1000,
        max_memory_kb: 0,
        parallel_threads: 0,
        flags: CryptPbkdf::NO_BENCHMARK,
    }
}

fn err(device: &Path, action: &'static str) -> impl FnOnce(LibcryptErr) -> LuksError + use<> {
    let device = device.to_owned();
    move |source| LuksError {
        device,
        action,
        source,
    }
}

/// Open `device` and load its LUKS2 header.
fn load(device: &Path) -> Result<CryptDevice, LuksError> {
    let mut cd = CryptInit::init(device).map_err(err(device, "open"))?;
    cd.context_handle()
        .load::<()>(Some(EncryptionFormat::Luks2), None)
        .map_err(err(device, "read the LUKS2 header"))?;
    Ok(cd)
}

/// Whether `device` starts with a LUKS2 header libcryptsetup can read.
pub fn has_header(device: &Path) -> bool {
    load(device).is_ok()
}

/// Format `device` as LUKS2 (aes-xts-plain64, a fresh random volume key) with `device_key` in
/// [`DEVICE_SLOT`].
pub fn format(device: &Path, device_key: &[u8]) -> Result<(), LuksError> {
    let mut cd = CryptInit::init(device).map_err(err(device, "open"))?;
    let params = CryptParamsLuks2 {
        pbkdf: Some(device_pbkdf()),
        integrity: None,
        integrity_params: None,
        data_alignment: 0,
        data_device: None,
        sector_size: 512,
        label: Some(LABEL.into()),
        subsystem: None,
    };
    let mut params_ref: CryptParamsLuks2Ref<'_> = (&params)
        .try_into()
        .map_err(err(device, "LUKS2 parameters"))?;
    cd.context_handle()
        .format(
            EncryptionFormat::Luks2,
            ("aes", "xts-plain64"),
            None,
            Either::Right(VOLUME_KEY_BYTES),
            Some(&mut params_ref),
        )
        .map_err(err(device, "format LUKS2"))?;
    cd.settings_handle()
        .set_pbkdf_type(&device_pbkdf())
        .map_err(err(device, "set the device key's KDF"))?;
    // The volume key generated by format() is still in the context.
    cd.keyslot_handle()
        .add_by_key(Some(DEVICE_SLOT), None, device_key, CryptVolumeKey::empty())
        .map_err(err(device, "add the device keyslot"))?;
    Ok(())
}

/// Map `device` as `/dev/mapper/<name>` with a key or passphrase; returns the keyslot it opened.
pub fn activate(device: &Path, name: &str, key: &[u8]) -> Result<u32, LuksError> {
    let mut cd = load(device)?;
    cd.activate_handle()
        .activate_by_passphrase(Some(name), None, key, CryptActivate::empty())
        .map_err(err(device, "unlock"))
}

/// The keyslot `key` opens, without mapping anything.
pub fn check_key(device: &Path, key: &[u8]) -> Result<u32, LuksError> {
    let mut cd = load(device)?;
    cd.activate_handle()
        .activate_by_passphrase(None, None, key, CryptActivate::empty())
        .map_err(err(device, "check the key"))
}

/// Whether `/dev/mapper/<name>` exists.
pub fn is_active(name: &str) -> bool {
    matches!(
        libcryptsetup_rs::status(None, name),
        Ok(CryptStatusInfo::Active | CryptStatusInfo::Busy)
    )
}

/// Remove `/dev/mapper/<name>` (its filesystem must be unmounted). Nothing to do if it is absent.
pub fn deactivate(name: &str) -> Result<(), LuksError> {
    if !is_active(name) {
        return Ok(());
    }
    let path = Path::new("/dev/mapper").join(name);
    let mut cd = CryptInit::init_by_name_and_header(name, None).map_err(err(&path, "open"))?;
    cd.activate_handle()
        .deactivate(name, CryptDeactivate::empty())
        .map_err(err(&path, "close"))
}

/// Put `passphrase` in [`RENTER_SLOT`] (replacing what was there), unlocking with `existing` (the
/// device key or the current passphrase).
pub fn set_renter_passphrase(
    device: &Path,
    existing: &[u8],
    passphrase: &[u8],
    kdf: PassphraseKdf,
) -> Result<(), LuksError> {
    let mut cd = load(device)?;
    if let Some(pbkdf) = kdf.pbkdf() {
        cd.settings_handle()
            .set_pbkdf_type(&pbkdf)
            .map_err(err(device, "set the passphrase's KDF"))?;
    }
    let renter_set = slot_active(&mut cd, RENTER_SLOT);
    let opened = cd
        .activate_handle()
        .activate_by_passphrase(None, None, existing, CryptActivate::empty())
        .map_err(err(device, "check the current key"))?;
    if renter_set && opened == RENTER_SLOT {
        cd.keyslot_handle()
            .change_by_passphrase(Some(RENTER_SLOT), Some(RENTER_SLOT), existing, passphrase)
            .map_err(err(device, "change the passphrase"))?;
    } else {
        if renter_set {
            cd.keyslot_handle()
                .destroy(RENTER_SLOT)
                .map_err(err(device, "remove the old passphrase"))?;
        }
        cd.keyslot_handle()
            .add_by_passphrase(Some(RENTER_SLOT), existing, passphrase)
            .map_err(err(device, "add the passphrase"))?;
    }
    Ok(())
}

/// Destroy keyslot `slot` if it is in use.
pub fn destroy_slot(device: &Path, slot: u32) -> Result<(), LuksError> {
    let mut cd = load(device)?;
    if slot_active(&mut cd, slot) {
        cd.keyslot_handle()
            .destroy(slot)
            .map_err(err(device, "destroy a keyslot"))?;
    }
    Ok(())
}

/// The keyslots in use.
pub fn active_slots(device: &Path) -> Result<Vec<u32>, LuksError> {
    let mut cd = load(device)?;
    Ok((0..MAX_SLOTS)
        .filter(|&s| slot_active(&mut cd, s))
        .collect())
}

fn slot_active(cd: &mut CryptDevice, slot: u32) -> bool {
    matches!(
        cd.keyslot_handle().status(slot),
        Ok(KeyslotInfo::Active | KeyslotInfo::ActiveLast)
    )
}

/// Destroy every keyslot of the header on `device`; returns the header's size in bytes (where the
/// encrypted data starts), which the caller then overwrites. `None` when there is no readable
/// header (already erased).
pub fn erase(device: &Path) -> Result<Option<u64>, LuksError> {
    let Ok(mut cd) = load(device) else {
        return Ok(None);
    };
    for slot in 0..MAX_SLOTS {
        if slot_active(&mut cd, slot) {
            cd.keyslot_handle()
                .destroy(slot)
                .map_err(err(device, "destroy a keyslot"))?;
        }
    }
    Ok(Some(cd.status_handle().get_data_offset() * 512))
}
