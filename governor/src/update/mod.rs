//! System updates: the image's two root slots (`slots.rs`), a signed RAUC bundle of a newer image
//! written to the slot not running, a trial boot, and a fall back to the old slot when the new one
//! does not prove itself (DESIGN.md §4, "Updates").
//!
//! The manifest at the config's `updateUrl` names the newest bundle per board (`manifest.rs`). The
//! governor looks at it every few hours and, between rentals (after a wipe, before registering:
//! [`Updater::between_rentals`]), downloads the bundle (`download.rs`), has RAUC check its signature
//! and reads its board and version, refuses anything that is not newer, writes the other slot and
//! reboots into it. The new slot is on trial: the governor marks it good only once the device has
//! registered again ([`confirm_trial`]); until then each boot costs one of its three tries (U-Boot's
//! boot script), and `p2pvps-trial-watch` on the image reboots a slot whose governor cannot start
//! or get healthy. With its tries gone the old slot boots, and the governor records the version as
//! failed ([`settle`]). `update.json` (`record.rs`) keeps what happened for `status`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use semver::Version;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::command::{self, CommandError};
use crate::slots::{self, SlotsError};
use crate::state::StateError;

pub mod cli;
pub mod download;
pub mod manifest;
pub mod record;

pub use download::DownloadError;
pub use manifest::{ManifestError, Offer};
pub use record::{Boot, Ending, RecordStore, Stage, UpdateRecord};

/// The image's release file: `IMAGE_ID=p2pvps-<board>`, `IMAGE_VERSION=<version>`.
const OS_RELEASE: &str = "/usr/lib/os-release";
/// How often the manifest is looked at while the device is rented (it is also looked at before
/// every registration).
pub const CHECK_EVERY: Duration = Duration::from_hours(6);
/// The manifest is small; the answer comes quickly or not at all.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("this system has no update slots (no RAUC): it is updated by its own package manager")]
    NoSlots,
    #[error("{OS_RELEASE} names no p2pvps image version (IMAGE_ID/IMAGE_VERSION): {0}")]
    Release(String),
    #[error("no updateUrl in device-config.json: updates are off")]
    NoSource,
    #[error("{0}")]
    Config(String),
    #[error("fetching the update manifest {url}: {detail}")]
    Manifest { url: String, detail: String },
    #[error(transparent)]
    ManifestContent(#[from] ManifestError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("update refused, nothing written: {0}")]
    Refused(String),
    #[error(transparent)]
    Slots(#[from] SlotsError),
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The system that runs: its board, version and root slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub board: String,
    pub version: String,
    /// `A` or `B`.
    pub slot: String,
}

impl Running {
    /// This system, or None where it has no slots (the `.deb` on an owner's own OS).
    pub fn detect() -> Result<Option<Self>, UpdateError> {
        if !slots::present() {
            return Ok(None);
        }
        let release = std::fs::read_to_string(OS_RELEASE).unwrap_or_default();
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        Self::from_texts(&release, &cmdline).map(Some)
    }

    /// From os-release's and the kernel command line's text.
    pub fn from_texts(release: &str, cmdline: &str) -> Result<Self, UpdateError> {
        let value = |key: &str| {
            release.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.strip_prefix('='))
                    .map(|v| v.trim().trim_matches('"').to_owned())
            })
        };
        let board = value("IMAGE_ID")
            .and_then(|id| id.strip_prefix("p2pvps-").map(str::to_owned))
            .ok_or_else(|| UpdateError::Release("no IMAGE_ID=p2pvps-<board>".into()))?;
        let version = value("IMAGE_VERSION")
            .ok_or_else(|| UpdateError::Release("no IMAGE_VERSION".into()))?;
        let slot = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("rauc.slot="))
            .filter(|s| matches!(*s, "A" | "B"))
            .ok_or_else(|| {
                UpdateError::Release("no rauc.slot=A|B on the kernel command line".into())
            })?
            .to_owned();
        Ok(Self {
            board,
            version,
            slot,
        })
    }

    /// RAUC's name for bundles of this board.
    pub fn compatible(&self) -> String {
        format!("p2pvps-{}", self.board)
    }
}

/// Whether `offered` is newer than `running`; versions that are not semantic never are.
pub fn is_newer(offered: &Version, running: &str) -> bool {
    Version::parse(running).is_ok_and(|r| *offered > r)
}

/// [`is_newer`] for two texts.
pub fn is_newer_text(offered: &str, running: &str) -> bool {
    Version::parse(offered).is_ok_and(|o| is_newer(&o, running))
}

/// At every start: what this boot is, acted upon. A normal boot's slot is marked good at once; a
/// trial waits for [`confirm_trial`]; a fall back to the old slot (or an install cut short) is
/// recorded, and the running slot made good and first again.
pub fn settle(state_dir: &Path, running: &Running) -> Result<Boot, UpdateError> {
    let records = RecordStore::new(state_dir);
    let record = records.load();
    let boot = record::classify(&record, &running.slot, &running.version);
    let now = chrono::Utc::now();
    match &boot {
        Boot::Normal => slots::mark_good()?,
        Boot::Trial { version } => {
            info!(%version, slot = %running.slot, "trial boot of the new version: marked good once registered");
        }
        Boot::RolledBack { version, slot } => {
            error!(%version, %slot, running = %running.version, "the update did not come up healthy; back on the previous version");
            slots::mark_good()?;
            slots::mark_active()?;
            records.update(|r| {
                r.pending = None;
                if !r.failed_versions.contains(version) {
                    r.failed_versions.push(version.clone());
                }
                r.last = Some(record::Outcome {
                    version: version.clone(),
                    result: Ending::RolledBack,
                    detail: format!(
                        "slot {slot} did not come up healthy; back on {} (slot {})",
                        running.version, running.slot
                    ),
                    at: now,
                });
            })?;
        }
        Boot::Interrupted { version, slot } => {
            warn!(%version, %slot, "an update's install was cut short; the device stayed on its version and tries again later");
            slots::mark_good()?;
            records.update(|r| {
                r.pending = None;
                r.last = Some(record::Outcome {
                    version: version.clone(),
                    result: Ending::Interrupted,
                    detail: format!(
                        "writing slot {slot} was cut short; still on {} (slot {})",
                        running.version, running.slot
                    ),
                    at: now,
                });
            })?;
        }
    }
    Ok(boot)
}

/// The new slot got the device registered: it is good, and the update done.
pub fn confirm_trial(state_dir: &Path, running: &Running) -> Result<(), UpdateError> {
    slots::mark_good()?;
    let records = RecordStore::new(state_dir);
    let from = records.load().pending.map(|p| p.from_version);
    records.update(|r| {
        r.pending = None;
        r.last = Some(record::Outcome {
            version: running.version.clone(),
            result: Ending::Updated,
            detail: format!(
                "running on slot {}{}",
                running.slot,
                from.map(|f| format!(", updated from {f}"))
                    .unwrap_or_default()
            ),
            at: chrono::Utc::now(),
        });
    })?;
    info!(version = %running.version, slot = %running.slot, "update healthy: slot marked good");
    Ok(())
}

/// Checks, downloads and installs updates for the running system.
pub struct Updater {
    http: reqwest::Client,
    manifest: Option<Url>,
    /// Where bundles are downloaded (on the state partition).
    dir: PathBuf,
    records: RecordStore,
    running: Running,
    /// One update at a time (the schedule and the gate before registering).
    busy: tokio::sync::Mutex<()>,
    updating: watch::Sender<bool>,
}

impl Updater {
    pub fn new(state_dir: &Path, running: Running, manifest: Option<Url>) -> Self {
        Self {
            http: http_client(),
            manifest,
            dir: state_dir.join("update"),
            records: RecordStore::new(state_dir),
            running,
            busy: tokio::sync::Mutex::new(()),
            updating: watch::Sender::new(false),
        }
    }

    pub fn running(&self) -> &Running {
        &self.running
    }

    /// True while an update is downloaded or written (the LED shows it).
    pub fn updating(&self) -> watch::Receiver<bool> {
        self.updating.subscribe()
    }

    /// The manifest's offer for this board when it is newer than what runs and has not failed
    /// here before; the check is recorded for `status`.
    pub async fn check(&self) -> Result<Option<Offer>, UpdateError> {
        let result = self.check_inner().await;
        let check = record::Check {
            at: chrono::Utc::now(),
            available: result
                .as_ref()
                .ok()
                .and_then(|o| o.as_ref().map(|o| o.version.to_string())),
            error: result.as_ref().err().map(ToString::to_string),
        };
        self.records.update(|r| r.last_check = Some(check))?;
        result
    }

    async fn check_inner(&self) -> Result<Option<Offer>, UpdateError> {
        let url = self.manifest.as_ref().ok_or(UpdateError::NoSource)?;
        let body = self.fetch_manifest(url).await?;
        let Some(offer) = manifest::offer_for(url, &body, &self.running.board)? else {
            return Ok(None);
        };
        let version = offer.version.to_string();
        if !is_newer(&offer.version, &self.running.version) {
            return Ok(None);
        }
        if self.records.load().failed_versions.contains(&version) {
            info!(%version, "the manifest offers a version that failed here before; waiting for a newer one");
            return Ok(None);
        }
        Ok(Some(offer))
    }

    async fn fetch_manifest(&self, url: &Url) -> Result<Vec<u8>, UpdateError> {
        let failed = |detail: String| UpdateError::Manifest {
            url: url.to_string(),
            detail,
        };
        let mut response = self
            .http
            .get(url.clone())
            .timeout(MANIFEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(format!("the server answered {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
            body.extend_from_slice(&chunk);
            if body.len() > manifest::MAX_MANIFEST_BYTES {
                return Err(failed(format!(
                    "larger than {} KiB: not a manifest",
                    manifest::MAX_MANIFEST_BYTES >> 10
                )));
            }
        }
        Ok(body)
    }

    /// The offered bundle on the state partition (downloaded, or resumed); older downloads go.
    pub async fn download(&self, offer: &Offer) -> Result<PathBuf, UpdateError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| UpdateError::Io {
            path: self.dir.clone(),
            action: "create",
            source,
        })?;
        let name = format!("p2pvps-{}-{}.raucb", self.running.board, offer.version);
        let dest = self.dir.join(&name);
        self.remove_downloads(Some(&name));
        download::fetch(&self.http, offer, &dest).await?;
        Ok(dest)
    }

    /// Delete downloaded bundles but `keep` (and its partial download).
    fn remove_downloads(&self, keep: Option<&str>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let kept = keep.is_some_and(|k| {
                name == k || name == format!("{}.part", k.trim_end_matches(".raucb"))
            });
            if !kept {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Check the bundle at `path` (RAUC: signature, board; then its version against the one
    /// running and, when given, the one the manifest promised) and write it to the other slot,
    /// which then boots next. `force` lets an older or equal version through.
    pub async fn install(
        &self,
        path: &Path,
        promised: Option<&Version>,
        force: bool,
    ) -> Result<String, UpdateError> {
        let bundle = path.to_owned();
        let info = tokio::task::spawn_blocking(move || slots::bundle_info(&bundle))
            .await
            .expect("rauc info runs");
        // A bundle the manifest offered and RAUC or the checks refuse is not fetched again.
        let refused = |reason: String, version: &str| {
            self.refused(version, &reason, promised.is_some());
            UpdateError::Refused(reason)
        };
        let info = match info {
            Ok(i) => i,
            Err(e) => {
                let version = promised.map(ToString::to_string).unwrap_or_default();
                return Err(refused(
                    format!(
                        "RAUC does not accept the bundle (its signature, its format): {}",
                        e.reason()
                    ),
                    &version,
                ));
            }
        };
        let version = info.version.clone();
        if info.compatible != self.running.compatible() {
            return Err(refused(
                format!(
                    "the bundle is for {}, this device is {}",
                    info.compatible,
                    self.running.compatible()
                ),
                &version,
            ));
        }
        let Ok(parsed) = Version::parse(&version) else {
            return Err(refused(
                format!("the bundle's version {version:?} is not a semantic version"),
                &version,
            ));
        };
        if let Some(p) = promised
            && *p != parsed
        {
            return Err(refused(
                format!("the bundle is version {version}, the manifest said {p}"),
                &version,
            ));
        }
        if !force && !is_newer(&parsed, &self.running.version) {
            return Err(refused(
                format!(
                    "version {version} is not newer than the running {} (a downgrade needs --force)",
                    self.running.version
                ),
                &version,
            ));
        }
        let slot = slots::other(&self.running.slot).to_owned();
        info!(%version, %slot, "installing the update");
        self.records.update(|r| {
            r.pending = Some(record::Pending {
                version: version.clone(),
                slot: slot.clone(),
                from_version: self.running.version.clone(),
                from_slot: self.running.slot.clone(),
                stage: Stage::Installing,
                at: chrono::Utc::now(),
            });
        })?;
        let bundle = path.to_owned();
        let written = tokio::task::spawn_blocking(move || slots::install(&bundle))
            .await
            .expect("rauc install runs");
        if let Err(e) = written {
            self.records.update(|r| {
                r.pending = None;
                r.last = Some(record::Outcome {
                    version: version.clone(),
                    result: Ending::Failed,
                    detail: format!("writing slot {slot} failed: {e}"),
                    at: chrono::Utc::now(),
                });
            })?;
            return Err(e.into());
        }
        self.records.update(|r| {
            if let Some(p) = &mut r.pending {
                p.stage = Stage::Installed;
            }
        })?;
        info!(%version, %slot, "update written; slot {slot} boots next, on trial");
        Ok(version)
    }

    fn refused(&self, version: &str, reason: &str, offered: bool) {
        warn!(%version, "update refused: {reason}");
        let promised = offered
            .then(|| version.to_owned())
            .filter(|v| !v.is_empty());
        let outcome = record::Outcome {
            version: version.to_owned(),
            result: Ending::Refused,
            detail: reason.to_owned(),
            at: chrono::Utc::now(),
        };
        let stored = self.records.update(|r| {
            r.last = Some(outcome);
            if let Some(v) = promised
                && !r.failed_versions.contains(&v)
            {
                r.failed_versions.push(v);
            }
        });
        if let Err(e) = stored {
            warn!(error = %e, "cannot record the refusal");
        }
    }

    /// Check, download, install: the version written, None when nothing newer is offered.
    pub async fn update_now(&self) -> Result<Option<String>, UpdateError> {
        let _one = self.busy.lock().await;
        let Some(offer) = self.check().await? else {
            return Ok(None);
        };
        info!(version = %offer.version, running = %self.running.version, "update available");
        self.updating.send_replace(true);
        let result = async {
            let bundle = self.download(&offer).await?;
            let written = self.install(&bundle, Some(&offer.version), false).await;
            // Written or refused, the file is done with (a refused one would be refused again).
            self.remove_downloads(None);
            written
        }
        .await;
        self.updating.send_replace(false);
        result.map(Some)
    }

    /// Between rentals: an update the manifest offers is applied now and the device reboots into
    /// it; anything that goes wrong is logged and the device goes on renting (it tries again
    /// before the next registration).
    pub async fn between_rentals(&self) {
        if self.manifest.is_none() {
            return;
        }
        match self.update_now().await {
            Ok(None) => {}
            Ok(Some(version)) => {
                self.updating.send_replace(true);
                reboot_into(&version).await;
            }
            Err(e) => warn!(error = %e, "no update this time; registering on the running version"),
        }
    }

    /// Every [`CHECK_EVERY`]: what the manifest offers, for `status` (applied between rentals).
    pub async fn check_on_schedule(&self) {
        if self.manifest.is_none() {
            return;
        }
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            match self.check().await {
                Ok(Some(offer)) => {
                    info!(version = %offer.version, "update available: applied after the current rental");
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "update check failed"),
            }
        }
    }
}

impl crate::lifecycle::BetweenRentals for Updater {
    fn run(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.between_rentals())
    }
}

/// The client for manifests and bundles: no overall timeout (a bundle takes minutes on a slow
/// line), but a connection that stalls for a minute is given up.
pub fn http_client() -> reqwest::Client {
    // reqwest is built without a default TLS provider (marketplace/mod.rs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_mins(1))
        .user_agent(concat!("p2pvps-governor/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client builds")
}

/// Reboot into the slot just written; returns only if the reboot could not be asked for.
pub async fn reboot_into(version: &str) {
    info!(%version, "rebooting into the update");
    match command::run("systemctl", ["reboot"]) {
        // systemd stops the governor on the way down.
        Ok(_) => std::future::pending::<()>().await,
        Err(e) => error!(error = %e, "cannot reboot into the update; it boots at the next restart"),
    }
}

#[cfg(test)]
mod tests;
