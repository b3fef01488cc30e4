//! The image's two root slots, as RAUC reports them (`rauc status`): which one runs, which one boots
//! next, and whether each is good. The governor tells RAUC when the running slot has proven itself
//! (`mark-good`), which gives it its boot tries back (U-Boot's boot script counts them down:
//! image/os/boot/boot.cmd). Where RAUC is not installed (the `.deb` on an owner's own OS) there are
//! no slots and nothing to do.

use std::path::Path;

use serde::Deserialize;

use crate::command::{self, CommandError};

/// RAUC's command-line client, which talks to its D-Bus service.
const RAUC: &str = "rauc";
/// Where RAUC is installed on the image.
const RAUC_CONFIG: &str = "/etc/rauc/system.conf";

#[derive(Debug, thiserror::Error)]
pub enum SlotsError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("`rauc status` answered what the governor cannot read ({0}): {1}")]
    Parse(serde_json::Error, String),
}

impl SlotsError {
    /// Why RAUC said no, without its progress chatter (`rauc-Message:` lines).
    pub fn reason(&self) -> String {
        match self {
            Self::Command(e) => {
                let lines: Vec<&str> = e
                    .detail
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.contains("rauc-Message:"))
                    .collect();
                if lines.is_empty() {
                    e.detail.clone()
                } else {
                    lines.join("; ")
                }
            }
            other @ Self::Parse(..) => other.to_string(),
        }
    }
}

/// What `rauc status --output-format=json` says, the parts the governor uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SlotStatus {
    /// The running slot: its boot name (`A`, `B`), from `rauc.slot=` on the kernel's command line.
    pub booted: String,
    /// The slot that boots next (RAUC's slot name, e.g. `rootfs.1`).
    #[serde(default)]
    pub boot_primary: Option<String>,
    /// Every slot, as `{ "rootfs.0": { … } }` objects.
    #[serde(default)]
    slots: Vec<std::collections::BTreeMap<String, Slot>>,
}

/// One slot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Slot {
    #[serde(default)]
    pub bootname: Option<String>,
    /// `good` or `bad` (whether it has boot tries left).
    #[serde(default)]
    pub boot_status: Option<String>,
}

impl SlotStatus {
    pub fn parse(json: &str) -> Result<Self, SlotsError> {
        serde_json::from_str(json).map_err(|e| SlotsError::Parse(e, json.trim().to_owned()))
    }

    /// Every slot with a boot name: (RAUC's name, the slot).
    pub fn slots(&self) -> impl Iterator<Item = (&str, &Slot)> {
        self.slots
            .iter()
            .flat_map(|m| m.iter())
            .filter(|(_, s)| s.bootname.is_some())
            .map(|(n, s)| (n.as_str(), s))
    }

    /// The boot name of the slot that boots next.
    pub fn primary_bootname(&self) -> Option<&str> {
        let primary = self.boot_primary.as_deref()?;
        self.slots()
            .find(|(name, _)| *name == primary)
            .and_then(|(_, s)| s.bootname.as_deref())
    }

    /// One line for people: `slot A (next boot: A; B bad)`.
    pub fn summary(&self) -> String {
        let others: Vec<String> = self
            .slots()
            .filter(|(_, s)| s.bootname.as_deref() != Some(self.booted.as_str()))
            .map(|(_, s)| {
                format!(
                    "{} {}",
                    s.bootname.as_deref().unwrap_or("?"),
                    s.boot_status.as_deref().unwrap_or("unknown")
                )
            })
            .collect();
        format!(
            "slot {} (next boot: {}{}{})",
            self.booted,
            self.primary_bootname().unwrap_or("?"),
            if others.is_empty() { "" } else { "; " },
            others.join(", ")
        )
    }
}

/// Whether this system has root slots (RAUC installed and configured).
pub fn present() -> bool {
    Path::new(RAUC_CONFIG).is_file()
}

/// The slots now; None where the system has none.
pub fn status() -> Result<Option<SlotStatus>, SlotsError> {
    if !present() {
        return Ok(None);
    }
    let json = command::run(RAUC, ["status", "--output-format=json"])?;
    SlotStatus::parse(&json).map(Some)
}

/// Tell RAUC that the running slot works: it keeps its boot tries.
pub fn mark_good() -> Result<(), SlotsError> {
    command::run(RAUC, ["status", "mark-good", "booted"])?;
    Ok(())
}

/// Make the running slot the one that boots next (after a slot that failed its trial).
pub fn mark_active() -> Result<(), SlotsError> {
    command::run(RAUC, ["status", "mark-active", "booted"])?;
    Ok(())
}

/// What a bundle says about itself, once RAUC has checked its signature against the image's
/// keyring (`rauc info`): nothing of an unsigned or foreign bundle gets this far.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BundleInfo {
    pub compatible: String,
    pub version: String,
}

impl BundleInfo {
    pub fn parse(json: &str) -> Result<Self, SlotsError> {
        serde_json::from_str(json).map_err(|e| SlotsError::Parse(e, json.trim().to_owned()))
    }
}

/// Check the bundle at `path` (signature, manifest) without writing anything.
pub fn bundle_info(path: &Path) -> Result<BundleInfo, SlotsError> {
    let json = command::run(
        RAUC,
        [
            "info".as_ref(),
            "--output-format=json".as_ref(),
            path.as_os_str(),
        ],
    )?;
    BundleInfo::parse(&json)
}

/// Write the bundle at `path` to the other slot and make that slot boot next (RAUC checks the
/// signature again as it installs). Minutes: the slot is written in full.
pub fn install(path: &Path) -> Result<(), SlotsError> {
    command::run(RAUC, ["install".as_ref(), path.as_os_str()])?;
    Ok(())
}

/// The slot that is not `slot` (`A` <-> `B`).
pub fn other(slot: &str) -> &'static str {
    if slot == "A" { "B" } else { "A" }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What RAUC 1.13 printed on the image's first boot (slot B empty, never installed).
    const STATUS: &str = r#"{"compatible":"p2pvps-qemu-aarch64","variant":"","booted":"A","boot_primary":"rootfs.0","slots":[{"rootfs.1":{"class":"rootfs","device":"/dev/disk/by-partuuid/2edbec05-03","type":"ext4","bootname":"B","state":"inactive","parent":null,"mountpoint":null,"boot_status":"bad"}},{"rootfs.0":{"class":"rootfs","device":"/dev/disk/by-partuuid/2edbec05-02","type":"ext4","bootname":"A","state":"booted","parent":null,"mountpoint":null,"boot_status":"good"}}],"artifact-repositories":[]}"#;

    #[test]
    fn reads_rauc_status() {
        let s = SlotStatus::parse(STATUS).unwrap();
        assert_eq!(s.booted, "A");
        assert_eq!(s.primary_bootname(), Some("A"));
        assert_eq!(s.slots().count(), 2);
        assert_eq!(s.summary(), "slot A (next boot: A; B bad)");
    }

    #[test]
    fn reads_rauc_info() {
        // As RAUC 1.13 prints it for a bundle of scripts/build-bundle.
        let info = BundleInfo::parse(r#"{"compatible":"p2pvps-qemu-aarch64","version":"0.9.2","description":"P2P VPS image for qemu-aarch64","build":"20261207","hooks":[],"hash":"ab","images":[{"rootfs":{"variant":null,"filename":"root.ext4","checksum":"cd","size":1073741824,"hooks":[]}}]}"#).unwrap();
        assert_eq!(info.compatible, "p2pvps-qemu-aarch64");
        assert_eq!(info.version, "0.9.2");
        assert_eq!(other("A"), "B");
        assert_eq!(other("B"), "A");
    }

    #[test]
    fn rauc_s_reason_is_kept_and_its_chatter_dropped() {
        let e = SlotsError::Command(CommandError {
            command: "rauc info x".into(),
            detail: "exit status: 1: rauc-Message: 01:12:08.164: Reading bundle: x\nrauc-Message: 01:12:08.229: Verifying bundle signature...\nsignature verification failed: Verify error:unable to get local issuer certificate".into(),
        });
        assert_eq!(
            e.reason(),
            "signature verification failed: Verify error:unable to get local issuer certificate"
        );
    }

    #[test]
    fn a_broken_answer_names_itself() {
        let e = SlotStatus::parse("Error creating proxy").unwrap_err();
        assert!(e.to_string().contains("Error creating proxy"), "{e}");
    }
}
