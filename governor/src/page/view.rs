//! What the owner's page shows, as JSON for its script, and the figures for `/metrics`: read from
//! what `status` reads (the state file, the tunnel's report, the network rules), the counters, the
//! last log lines and `check`'s lines. Never the renter's login name or password, nor any key.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::PageSource;
use crate::check;
use crate::metrics::Sample;
use crate::state::{Phase, StateStore};
use crate::status::{self, StatusView};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PageView {
    pub name: String,
    pub device_id: Option<String>,
    pub version: &'static str,
    pub now: DateTime<Utc>,
    pub phase: String,
    /// What the phase means, in words.
    pub meaning: &'static str,
    /// What the status LED shows in this phase.
    pub led: &'static str,
    pub ready_since: Option<DateTime<Utc>>,
    pub rental: Option<Rental>,
    pub tunnel: Option<Tunnel>,
    pub storage: Storage,
    pub network_rules: Option<String>,
    pub check_ins: CheckIns,
    pub rentals_completed: u64,
    pub checks: Vec<CheckLine>,
    pub checked_at: Option<DateTime<Utc>>,
    pub log: Vec<String>,
    /// The system's version and slot, and its last update (the image; None elsewhere).
    pub system: Option<status::SystemView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rental {
    pub ends: DateTime<Utc>,
    pub seconds_left: i64,
    /// "in 3 h 12 min".
    pub left: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tunnel {
    pub state: String,
    pub error: Option<String>,
    pub renter_sessions: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Who holds the volume's key, in words.
    pub key: Option<&'static str>,
    pub used_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckIns {
    pub last: Option<DateTime<Utc>>,
    /// Seconds since the last check-in, by the wall clock that recorded it (which may be far off
    /// before it is synchronised: the difference is still right).
    pub seconds_ago: Option<i64>,
    pub last_error: Option<String>,
    pub ok: u64,
    pub failed: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckLine {
    pub item: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

/// What a phase means to an owner, and what the LED shows meanwhile.
pub fn meaning(phase: &str) -> (&'static str, &'static str) {
    match phase {
        "preparing-storage" => (
            "Making the next renter's encrypted storage and container (or waiting for the USB drive).",
            "3 blinks, pause (while it waits for the USB drive)",
        ),
        "registering" => (
            "Ready for a renter: listed on the marketplace, waiting to be rented.",
            "slow even blink",
        ),
        "provisioning" => ("Rented: making the renter's login.", "slow even blink"),
        "serving" => (
            "Rented: the renter's server is running.",
            "steady on (a short dark blip every 2 s while a renter is logged in)",
        ),
        "expired" => (
            "The rental ended: removing the renter's container.",
            "very fast flicker",
        ),
        "wiping" => (
            "Wiping the renter's storage, so that nothing of theirs survives.",
            "very fast flicker",
        ),
        _ => (
            "Starting: no rental cycle has begun yet (is device-config.json on the boot partition?).",
            "fast even blink, or 2 blinks and a pause without device-config.json",
        ),
    }
}

fn load(source: &PageSource) -> StatusView {
    let mut v = status::load_unverified(&StateStore::new(&source.state_dir))
        .unwrap_or_else(|_| StatusView::from_state(None));
    v.network_rules = v.network_rules.take().map(|bridge| source.rules(&bridge));
    v
}

/// The page's content now.
pub fn gather(
    source: &Arc<PageSource>,
    checks: Vec<check::Line>,
    checked_at: Option<DateTime<Utc>>,
) -> PageView {
    let now = (source.now)();
    let mut v = load(source);
    let counted = source.hub.counters().get();
    let (used_bytes, free_bytes) = volume_space(source, &v);
    let (meaning, led) = meaning(&v.phase);
    PageView {
        name: format!("{}.local", source.name),
        device_id: v.device_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        system: v.system.take(),
        now,
        meaning,
        led,
        ready_since: v.ready_since,
        rental: rental_end(&v).map(|ends| Rental {
            ends,
            seconds_left: (ends - now).num_seconds().max(0),
            left: status::relative(ends, now),
        }),
        tunnel: v.tunnel.as_ref().map(|t| Tunnel {
            state: t.state.clone(),
            error: t.error.clone(),
            renter_sessions: t.sessions,
        }),
        storage: Storage {
            key: v.storage_key.as_deref().map(|k| match k {
                "device" => "encrypted; key held by this device",
                "renter" => "encrypted; key held by the renter",
                _ => "encrypted; locked until the renter unlocks it",
            }),
            used_bytes,
            free_bytes,
        },
        network_rules: v.network_rules.clone(),
        check_ins: CheckIns {
            last: v.last_heartbeat,
            seconds_ago: v
                .last_heartbeat
                .map(|at| (Utc::now() - at).num_seconds().max(0)),
            last_error: v.last_heartbeat_error.clone(),
            ok: counted.check_ins_ok,
            failed: counted.check_ins_failed,
        },
        rentals_completed: v.rentals_completed,
        checks: checks
            .into_iter()
            .map(|l| CheckLine {
                item: l.item,
                ok: l.verdict == check::Verdict::Ok,
                detail: l.detail,
                fix: l.fix,
            })
            .collect(),
        checked_at,
        log: crate::logging::recent_lines(),
        phase: v.phase,
    }
}

/// The figures for `/metrics`.
pub fn sample(source: &PageSource) -> Sample {
    let v = load(source);
    let (storage_used_bytes, storage_free_bytes) = volume_space(source, &v);
    Sample {
        device_id: v.device_id.clone().unwrap_or_default(),
        rental_seconds_left: rental_end(&v).map(|e| (e - (source.now)()).num_seconds().max(0)),
        tunnel_up: v.tunnel.as_ref().is_some_and(|t| t.state == "up"),
        renter_sessions: v.tunnel.as_ref().map_or(0, |t| t.sessions),
        storage_used_bytes,
        storage_free_bytes,
        rentals_completed: v.rentals_completed,
        counted: source.hub.counters().get(),
        rss_bytes: crate::metrics::own_rss(),
        phase: v.phase,
    }
}

/// The end of the rental in force (the state keeps the last lease's until the wipe).
fn rental_end(v: &StatusView) -> Option<DateTime<Utc>> {
    let rented = Phase::ALL
        .into_iter()
        .any(|p| p.rented() && p.as_str() == v.phase);
    v.expiration.filter(|_| rented)
}

/// Bytes used and free on the rental's volume, while it is mounted (a USB volume's mount point is
/// `<state>/mnt/<volume>`, a volume file's `<storage root>/<volume>`).
fn volume_space(source: &PageSource, v: &StatusView) -> (Option<u64>, Option<u64>) {
    let Some(volume) = &v.storage_volume else {
        return (None, None);
    };
    let Some(path) = [
        source.state_dir.join("mnt").join(volume),
        source.storage_root.join(volume),
    ]
    .into_iter()
    .find(|p| is_mount_point(p)) else {
        return (None, None);
    };
    match rustix::fs::statvfs(&path) {
        Ok(s) => {
            let used = s.f_blocks.saturating_sub(s.f_bfree) * s.f_frsize;
            (Some(used), Some(s.f_bavail * s.f_frsize))
        }
        Err(_) => (None, None),
    }
}

fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(here), Some(Ok(up))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    here.dev() != up.dev()
}
