//! What the device remembers of its updates (`update.json` in the state directory, beside the
//! state file): the install under way, the last update's result, the versions that failed, the
//! last check. Read at every start to tell a new slot on trial from a slot the device fell back to.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::state::{StateError, write_atomic};

pub const FILE_NAME: &str = "update.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRecord {
    /// An install that has started and not yet proven itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// How the last update ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Outcome>,
    /// Versions that were installed and did not come up healthy: not offered again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_versions: Vec<String>,
    /// The last look at the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<Check>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub version: String,
    /// The slot being written (boot name, `A` or `B`).
    pub slot: String,
    pub from_version: String,
    pub from_slot: String,
    pub stage: Stage,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// RAUC is writing the slot.
    Installing,
    /// Written; the device reboots into it for its trial.
    Installed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub version: String,
    pub result: Ending,
    /// In words, for `status`.
    pub detail: String,
    pub at: DateTime<Utc>,
}

/// How an update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    /// Running and healthy on the new version.
    Updated,
    /// The new slot did not come up healthy: back on the old one.
    RolledBack,
    /// The install stopped half-way (a power cut): the old slot runs; it is tried again.
    Interrupted,
    /// The bundle was not accepted (signature, board, version, digest): nothing was written.
    Refused,
    /// Writing the slot failed.
    Failed,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Updated => "updated",
            Self::RolledBack => "rolled back",
            Self::Interrupted => "interrupted",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub at: DateTime<Utc>,
    /// A newer version the manifest offers, not yet applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The record's file.
#[derive(Debug, Clone)]
pub struct RecordStore {
    path: PathBuf,
}

impl RecordStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
        }
    }

    /// The record; an empty one when there is none. A record that cannot be read is set aside
    /// (it only informs: the slots' own state is RAUC's).
    pub fn load(&self) -> UpdateRecord {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, record: &UpdateRecord) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(record).expect("record serialises");
        write_atomic(&self.path, &json)
    }

    /// Load, change, save.
    pub fn update(&self, change: impl FnOnce(&mut UpdateRecord)) -> Result<(), StateError> {
        let mut record = self.load();
        change(&mut record);
        self.save(&record)
    }
}

/// What this boot is, for the update that may be under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// No update under way: the running slot is marked good now.
    Normal,
    /// The new slot's first runs: it is marked good once the device is healthy (registered).
    Trial { version: String },
    /// The device came back on the old slot: the new one did not prove itself.
    RolledBack { version: String, slot: String },
    /// The install stopped before the slot was written in full.
    Interrupted { version: String, slot: String },
}

/// Tell what this boot is from the record's pending install, the slot that booted and the
/// version it runs.
pub fn classify(record: &UpdateRecord, booted: &str, running: &str) -> Boot {
    let Some(p) = &record.pending else {
        return Boot::Normal;
    };
    match p.stage {
        Stage::Installing if booted != p.slot => Boot::Interrupted {
            version: p.version.clone(),
            slot: p.slot.clone(),
        },
        Stage::Installed if booted == p.slot && running == p.version => Boot::Trial {
            version: p.version.clone(),
        },
        Stage::Installed if booted != p.slot => Boot::RolledBack {
            version: p.version.clone(),
            slot: p.slot.clone(),
        },
        // The slot runs, but not the version recorded (installed by hand meanwhile): nothing to
        // judge.
        _ => Boot::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(stage: Stage) -> UpdateRecord {
        UpdateRecord {
            pending: Some(Pending {
                version: "0.9.2".into(),
                slot: "B".into(),
                from_version: "0.9.1".into(),
                from_slot: "A".into(),
                stage,
                at: Utc::now(),
            }),
            ..UpdateRecord::default()
        }
    }

    #[test]
    fn a_boot_is_told_by_the_pending_install() {
        assert_eq!(
            classify(&UpdateRecord::default(), "A", "0.9.1"),
            Boot::Normal
        );
        assert_eq!(
            classify(&pending(Stage::Installed), "B", "0.9.2"),
            Boot::Trial {
                version: "0.9.2".into()
            }
        );
        assert_eq!(
            classify(&pending(Stage::Installed), "A", "0.9.1"),
            Boot::RolledBack {
                version: "0.9.2".into(),
                slot: "B".into()
            }
        );
        assert_eq!(
            classify(&pending(Stage::Installing), "A", "0.9.1"),
            Boot::Interrupted {
                version: "0.9.2".into(),
                slot: "B".into()
            }
        );
        assert_eq!(
            classify(&pending(Stage::Installed), "B", "0.9.7"),
            Boot::Normal
        );
    }

    #[test]
    fn the_record_survives_a_round_trip_and_a_broken_file_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::new(dir.path());
        assert_eq!(store.load(), UpdateRecord::default());
        let mut r = pending(Stage::Installing);
        r.failed_versions.push("0.9.0".into());
        store.save(&r).unwrap();
        assert_eq!(store.load(), r);
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").unwrap();
        assert_eq!(store.load(), UpdateRecord::default());
    }
}
