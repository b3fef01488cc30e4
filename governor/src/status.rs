//! `p2pvps-governor status`: what the device is doing, read from the state file. Never a secret.

use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Local, Utc};
use serde::Serialize;

use crate::sandbox::NftFirewall;
use crate::sandbox::tunnel::PUBLIC_KEY_FILE;
use crate::socket::{TUNNEL_FILE, TunnelReport};
use crate::state::{Phase, State, StateError, StateStore};
use crate::storage::UsbStorage;
use crate::storage::keys::KeyDir;
use crate::update::{RecordStore, Running, Stage, UpdateRecord};

/// The public view of the state.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub phase: String,
    pub device_id: Option<String>,
    pub username: Option<String>,
    pub port: Option<u16>,
    pub expiration: Option<DateTime<Utc>>,
    pub container: Option<String>,
    pub storage_volume: Option<String>,
    pub rentals_completed: u64,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub last_heartbeat_error: Option<String>,
    /// The tunnel as the connector last reported it.
    pub tunnel: Option<TunnelReport>,
    /// The encrypted volume's key: `device`, `renter` or `renter-locked`; None when not encrypted
    /// (or no volume yet).
    pub storage_key: Option<String>,
    /// The renter's network rules: `in place (bridge …)` or what is wrong; None before the first
    /// rental.
    pub network_rules: Option<String>,
    /// The public half of the device's tunnel key, for the marketplace's operator.
    pub tunnel_key: Option<String>,
    /// Since when everything the next renter needs is in place, while the device is offered.
    pub ready_since: Option<DateTime<Utc>>,
    /// Where the owner's page is (`http://p2pvps-….local/`), while the governor serves it.
    pub page: Option<String>,
    /// The system's version and slot and its updates; None where it has no update slots.
    pub system: Option<SystemView>,
}

/// The running system and its updates.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemView {
    pub version: String,
    pub slot: String,
    /// How the last update ended: `0.9.3 rolled back: …`.
    pub last_update: Option<String>,
    pub last_update_at: Option<DateTime<Utc>>,
    /// What is under way or waiting: `0.9.4 on trial`, `0.9.4 available`.
    pub update: Option<String>,
    /// Why the last look at the manifest failed.
    pub update_check_error: Option<String>,
}

impl SystemView {
    pub fn new(running: &Running, record: &UpdateRecord) -> Self {
        let update = match &record.pending {
            Some(p) if p.stage == Stage::Installed => Some(format!(
                "{} on trial on slot {} (good once registered)",
                p.version, p.slot
            )),
            Some(p) => Some(format!("{} being written to slot {}", p.version, p.slot)),
            None => record
                .last_check
                .as_ref()
                .and_then(|c| c.available.clone())
                .filter(|v| crate::update::is_newer_text(v, &running.version))
                .map(|v| format!("{v} available: installed after the current rental")),
        };
        Self {
            version: running.version.clone(),
            slot: running.slot.clone(),
            last_update: record
                .last
                .as_ref()
                .map(|o| format!("{} {}: {}", o.version, o.result.as_str(), o.detail)),
            last_update_at: record.last.as_ref().map(|o| o.at),
            update,
            update_check_error: record.last_check.as_ref().and_then(|c| c.error.clone()),
        }
    }
}

impl StatusView {
    pub fn from_state(state: Option<&State>) -> Self {
        let Some(s) = state else {
            return Self {
                phase: "not-started".into(),
                device_id: None,
                username: None,
                port: None,
                expiration: None,
                container: None,
                storage_volume: None,
                rentals_completed: 0,
                last_heartbeat: None,
                last_heartbeat_error: None,
                tunnel: None,
                storage_key: None,
                network_rules: None,
                tunnel_key: None,
                ready_since: None,
                page: None,
                system: None,
            };
        };
        Self {
            phase: s.phase.as_str().into(),
            device_id: Some(s.device_id.to_string()),
            username: s.lease.as_ref().map(|l| l.username.to_string()),
            port: s.lease.as_ref().map(|l| l.port.get()),
            expiration: s.lease.as_ref().map(|l| l.expiration),
            container: s.container.clone(),
            storage_volume: Some(s.volume.clone()),
            rentals_completed: s.rentals_completed,
            last_heartbeat: s.last_heartbeat.as_ref().map(|h| h.at),
            last_heartbeat_error: s.last_heartbeat.as_ref().and_then(|h| h.error.clone()),
            tunnel: None,
            storage_key: None,
            network_rules: s.network_rules.clone(),
            tunnel_key: None,
            ready_since: s.ready_since.filter(|_| s.phase == Phase::Registering),
            page: None,
            system: None,
        }
    }

    /// Human-readable lines; `now` makes "in 3 h 12 min" testable.
    pub fn render(&self, now: DateTime<Utc>) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| {
            let _ = writeln!(out, "{k:<16} {v}");
        };
        line("phase", &self.phase);
        if let Some(at) = self.ready_since {
            let local = at.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S %Z");
            line(
                "ready",
                &format!("for a renter since {local} ({})", relative(at, now)),
            );
        }
        if let Some(d) = &self.device_id {
            line("device", d);
        }
        if let Some(p) = &self.page {
            line("owner's page", p);
        }
        if let Some(u) = &self.username {
            line("renter login", u);
        }
        if let Some(p) = self.port {
            line("tunnel port", &p.to_string());
        }
        if let Some(e) = self.expiration {
            let local = e.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S %Z");
            line("expires", &format!("{local} ({})", relative(e, now)));
        }
        if let Some(c) = &self.container {
            line("container", c.get(..12).unwrap_or(c));
        }
        if let Some(v) = &self.storage_volume {
            line("storage volume", v);
        }
        if let Some(k) = &self.storage_key {
            let text = match k.as_str() {
                "device" => "encrypted; key held by this device",
                "renter" => "encrypted; key held by the renter (open)",
                _ => "encrypted; LOCKED until the renter runs `p2pvps-storage unlock`",
            };
            line("storage key", text);
        }
        if let Some(t) = &self.tunnel {
            let detail = t
                .error
                .as_deref()
                .map_or(String::new(), |e| format!(": {e}"));
            line(
                "tunnel",
                &format!(
                    "{}{detail} (reported {})",
                    match t.state.as_str() {
                        "standby" => "standby: logged in, the port comes with the next rental",
                        other => other,
                    },
                    relative(t.reported_at, now)
                ),
            );
            line(
                "renter sessions",
                &format!("{} (as the renter's container reports it)", t.sessions),
            );
        }
        if let Some(r) = &self.network_rules {
            line("network rules", r);
        }
        if let Some(k) = &self.tunnel_key {
            line("tunnel key", k);
        }
        if let Some(sys) = &self.system {
            line("system", &format!("{} on slot {}", sys.version, sys.slot));
            if let (Some(last), Some(at)) = (&sys.last_update, sys.last_update_at) {
                line("last update", &format!("{last} ({})", relative(at, now)));
            }
            if let Some(u) = &sys.update {
                line("update", u);
            }
            if let Some(e) = &sys.update_check_error {
                line("update check", e);
            }
        }
        line("rentals done", &self.rentals_completed.to_string());
        if let Some(at) = self.last_heartbeat {
            let result = self.last_heartbeat_error.as_deref().unwrap_or("ok");
            line(
                "last heartbeat",
                &format!("{} ({result})", relative(at, now)),
            );
        }
        out
    }
}

/// "in 3 h 12 min" / "5 min ago".
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    let abs = secs.unsigned_abs();
    if abs == 0 {
        return "now".to_owned();
    }
    let text = match abs {
        1..60 => format!("{abs} s"),
        60..3600 => format!("{} min", abs / 60),
        3600..86_400 => format!("{} h {} min", abs / 3600, abs % 3600 / 60),
        _ => format!("{} d {} h", abs / 86_400, abs % 86_400 / 3600),
    };
    if secs >= 0 {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

pub fn load(store: &StateStore) -> Result<StatusView, StateError> {
    let mut view = load_unverified(store)?;
    if let Some(bridge) = view.network_rules.take() {
        view.network_rules = Some(rules_text(&bridge));
    }
    Ok(view)
}

/// Whether the renter's network rules for `bridge` are in the kernel, in words (runs `nft`).
pub fn rules_text(bridge: &str) -> String {
    match NftFirewall::verify(bridge) {
        Ok(()) => format!("in place (bridge {bridge})"),
        Err(e) => format!("NOT IN PLACE: {e}"),
    }
}

/// [`load`] without asking the kernel about the network rules: `network_rules` holds the bridge's
/// name (the owner's page asks less often than it is read).
pub fn load_unverified(store: &StateStore) -> Result<StatusView, StateError> {
    let mut view = StatusView::from_state(store.load()?.as_ref());
    // Written by the running governor; absent between rentals.
    view.tunnel = std::fs::read(store.dir().join(TUNNEL_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    view.page = std::fs::read_to_string(store.dir().join(crate::page::URL_FILE))
        .ok()
        .map(|u| u.trim().to_owned());
    view.tunnel_key = std::fs::read_to_string(store.dir().join(PUBLIC_KEY_FILE))
        .ok()
        .map(|k| k.trim().to_owned());
    if let Some(volume) = &view.storage_volume {
        view.storage_key = storage_key(store.dir(), volume).map(str::to_owned);
    }
    if let Ok(Some(running)) = Running::detect() {
        let record = RecordStore::new(store.dir()).load();
        view.system = Some(SystemView::new(&running, &record));
    }
    Ok(view)
}

/// Who holds the volume's key, from what the governor leaves: the device key file, the open LUKS2
/// device, or the locked placeholder at the mount point.
fn storage_key(state_dir: &std::path::Path, volume: &str) -> Option<&'static str> {
    let keys = KeyDir::new(state_dir);
    if keys.path(volume).exists() {
        return Some("device");
    }
    if Path::new("/dev/mapper")
        .join(UsbStorage::mapper_name(volume))
        .exists()
    {
        return Some("renter");
    }
    let mount_point = state_dir.join("mnt").join(volume);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let locked = mounts.lines().any(|l| {
        let mut fields = l.split(' ');
        fields.nth(4).map(Path::new) == Some(mount_point.as_path())
            && l.contains(" - tmpfs p2pvps-locked ")
    });
    locked.then_some("renter-locked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storage_key_holder_is_read_from_what_the_governor_leaves() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(storage_key(tmp.path(), "vol1"), None);
        KeyDir::new(tmp.path()).create("vol1").unwrap();
        assert_eq!(storage_key(tmp.path(), "vol1"), Some("device"));
        let view = StatusView {
            storage_key: Some("renter-locked".into()),
            ..StatusView::from_state(None)
        };
        assert!(
            view.render(Utc::now())
                .contains("LOCKED until the renter runs")
        );
    }

    #[test]
    fn ready_for_a_renter_shows_only_while_the_device_is_offered() {
        let now = Utc::now();
        let mut state =
            State::new(crate::types::DeviceId::parse("5a2608cfd7df9800266a339d").unwrap());
        state.ready_since = Some(now - chrono::Duration::seconds(90));
        state.phase = Phase::Registering;
        let shown = StatusView::from_state(Some(&state)).render(now);
        assert!(
            shown.contains("ready            for a renter since "),
            "{shown}"
        );
        assert!(shown.contains("(1 min ago)"), "{shown}");
        state.phase = Phase::Serving;
        let shown = StatusView::from_state(Some(&state)).render(now);
        assert!(!shown.contains("for a renter since"), "{shown}");
    }

    #[test]
    fn relative_times() {
        let now = Utc::now();
        assert_eq!(
            relative(now + chrono::Duration::seconds(3 * 3600 + 12 * 60 + 5), now),
            "in 3 h 12 min"
        );
        assert_eq!(
            relative(now - chrono::Duration::seconds(300), now),
            "5 min ago"
        );
        assert_eq!(
            relative(now + chrono::Duration::seconds(2 * 86_400 + 3600), now),
            "in 2 d 1 h"
        );
        assert_eq!(relative(now + chrono::Duration::seconds(7), now), "in 7 s");
        assert_eq!(relative(now, now), "now");
    }

    #[test]
    fn not_started() {
        let v = StatusView::from_state(None);
        assert_eq!(v.phase, "not-started");
        assert!(
            v.render(Utc::now())
                .starts_with("phase            not-started\n")
        );
    }

    #[test]
    fn the_system_line_names_the_version_slot_and_the_last_update() {
        use crate::update::record::{Check, Ending, Outcome};
        let now = Utc::now();
        let running = Running {
            board: "rpi4".into(),
            version: "0.9.2".into(),
            slot: "B".into(),
        };
        let record = UpdateRecord {
            last: Some(Outcome {
                version: "0.9.3".into(),
                result: Ending::RolledBack,
                detail: "slot A did not come up healthy; back on 0.9.2 (slot B)".into(),
                at: now - chrono::Duration::seconds(600),
            }),
            failed_versions: vec!["0.9.3".into()],
            last_check: Some(Check {
                at: now,
                available: Some("0.9.4".into()),
                error: None,
            }),
            ..UpdateRecord::default()
        };
        let view = StatusView {
            system: Some(SystemView::new(&running, &record)),
            ..StatusView::from_state(None)
        };
        let shown = view.render(now);
        assert!(
            shown.contains("system           0.9.2 on slot B\n"),
            "{shown}"
        );
        assert!(
            shown.contains("last update      0.9.3 rolled back: slot A did not come up healthy; back on 0.9.2 (slot B) (10 min ago)"),
            "{shown}"
        );
        assert!(
            shown.contains("update           0.9.4 available: installed after the current rental"),
            "{shown}"
        );
        // An offer the device has meanwhile installed is not shown as available.
        let running = Running {
            version: "0.9.4".into(),
            ..running
        };
        assert_eq!(SystemView::new(&running, &record).update, None);
    }
}
