//! Telling the renter when the rental ends: the lease saved for `p2pvps-lease` (which the image's
//! `/etc/update-motd.d/20-p2pvps-lease` runs, so Debian's pam_motd puts the line in the banner of
//! each SSH login), and a `wall` message to every open session as each reminder comes due (by
//! default a day, an hour and ten minutes before the end). The governor gives the expiration and
//! the reminders on its socket (`{"op": "lease"}`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;
use tracing::{info, warn};

use crate::governor;

/// The lease for `p2pvps-lease`, readable by the renter's own user (the socket is root's).
pub const LEASE_FILE: &str = "/run/p2pvps-lease.json";
/// How often the lease is asked for again (the marketplace may move the end).
const POLL: Duration = Duration::from_secs(10);
/// How often it is asked for while there is none (between rentals, or the governor restarting):
/// every second, a local call, so the banner and `p2pvps-lease` are there when the first renter
/// logs in, seconds after the registration.
const NO_LEASE_POLL: Duration = Duration::from_secs(1);

/// The lease as the governor tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub expiration: DateTime<Utc>,
    /// Reminders, as time before the expiration.
    pub notices: Vec<Duration>,
    /// The server and port renters log in at, when the governor knows them.
    pub contact: Option<(String, u16)>,
}

impl Lease {
    fn to_wire(&self) -> Value {
        let mut v = json!({
            "expiration": self.expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "notices": self.notices.iter().map(Duration::as_secs).collect::<Vec<_>>(),
        });
        if let Some((server, port)) = &self.contact {
            v["server"] = json!(server);
            v["port"] = json!(port);
        }
        v
    }

    /// The lease from its wire form (the governor's answer), checked; `None` when unusable.
    pub fn from_wire(v: &Value) -> Option<Self> {
        let expiration = DateTime::parse_from_rfc3339(v.get("expiration")?.as_str()?)
            .ok()?
            .with_timezone(&Utc);
        let notices = v
            .get("notices")?
            .as_array()?
            .iter()
            .map(|n| n.as_u64().map(Duration::from_secs))
            .collect::<Option<Vec<_>>>()?;
        // A host name or address only: the renter's tools print it into shell commands.
        let server = v.get("server").and_then(Value::as_str).filter(|s| {
            !s.is_empty()
                && s.len() <= 253
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        });
        let port = v
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        let contact = server.zip(port).map(|(s, p)| (s.to_owned(), p));
        Some(Self {
            expiration,
            notices,
            contact,
        })
    }
}

/// The lease from the governor's socket.
pub async fn lease(socket: &Path) -> Result<Lease, governor::GovernorError> {
    let answer = governor::ask(socket, &json!({"op": "lease"})).await?;
    answer
        .get("lease")
        .and_then(Lease::from_wire)
        .ok_or_else(|| governor::GovernorError::BadAnswer {
            path: socket.to_owned(),
            reason: "no usable lease".into(),
        })
}

/// The lease as the connector last saved it in `path` ([`LEASE_FILE`]).
pub fn saved_lease(path: &Path) -> Result<Lease, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e} (the connector writes it once the governor names the rental's end)",
            path.display()
        )
    })?;
    serde_json::from_str::<Value>(&text)
        .ok()
        .as_ref()
        .and_then(Lease::from_wire)
        .ok_or_else(|| format!("{}: unreadable", path.display()))
}

/// "3 h 12 min", "2 d 1 h", "45 s".
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s.div_ceil(60)),
        3600..86_400 => {
            let m = (s % 3600) / 60;
            if m == 0 {
                format!("{} h", s / 3600)
            } else {
                format!("{} h {m} min", s / 3600)
            }
        }
        _ => {
            let h = (s % 86_400) / 3600;
            if h == 0 {
                format!("{} d", s / 86_400)
            } else {
                format!("{} d {h} h", s / 86_400)
            }
        }
    }
}

/// The banner line, and the `p2pvps-lease` output.
pub fn describe(lease: &Lease, now: DateTime<Utc>) -> String {
    let at = lease.expiration.format("%Y-%m-%d %H:%M UTC");
    match (lease.expiration - now).to_std() {
        Ok(left) if !left.is_zero() => format!(
            "This rental ends {at} (in {}). Everything in this container, /media/storage \
             included, is then erased: copy out what you want to keep.",
            human(left)
        ),
        _ => format!("This rental ended {at}: this container is about to be erased."),
    }
}

/// The wall message of a reminder.
fn reminder(lease: &Lease, now: DateTime<Utc>) -> String {
    format!("P2P VPS: {}", describe(lease, now))
}

/// The most urgent reminder that is due and not given yet, if any; marks every due one as given
/// (a container started 50 minutes before the end gets one message, not the day's and the hour's).
pub fn due(lease: &Lease, now: DateTime<Utc>, given: &mut Vec<Duration>) -> Option<Duration> {
    let left = (lease.expiration - now).to_std().unwrap_or(Duration::ZERO);
    if left.is_zero() {
        return None;
    }
    let mut most_urgent = None;
    for &n in &lease.notices {
        if left <= n && !given.contains(&n) {
            given.push(n);
            if most_urgent.is_none_or(|m| n < m) {
                most_urgent = Some(n);
            }
        }
    }
    most_urgent
}

/// How long until the next reminder comes due (at most [`POLL`]).
fn next_wake(lease: &Lease, now: DateTime<Utc>, given: &[Duration]) -> Duration {
    let left = (lease.expiration - now).to_std().unwrap_or(Duration::ZERO);
    lease
        .notices
        .iter()
        .filter(|n| !given.contains(n))
        .filter_map(|n| left.checked_sub(*n).filter(|d| !d.is_zero()))
        .min()
        .unwrap_or(POLL)
        .min(POLL)
        // Wake just after the threshold, not just before it.
        + Duration::from_millis(50)
}

/// Keep the banner current and send the reminders, for as long as the container runs.
pub async fn keep(socket: PathBuf, lease_file: PathBuf) {
    let mut given: Vec<Duration> = Vec::new();
    let mut last: Option<DateTime<Utc>> = None;
    let mut saved: Option<Lease> = None;
    loop {
        let Ok(lease) = lease(&socket).await else {
            // Between rentals, or the governor restarting: try again shortly.
            tokio::time::sleep(NO_LEASE_POLL).await;
            continue;
        };
        if last != Some(lease.expiration) {
            // A new rental, or the marketplace moved the end: the reminders start over.
            given.retain(|n| *n >= (lease.expiration - Utc::now()).to_std().unwrap_or_default());
            last = Some(lease.expiration);
        }
        let now = Utc::now();
        // Rewritten only when the governor's answer changes (a new rental, a moved end).
        if saved.as_ref() != Some(&lease) {
            match save(&lease_file, &lease) {
                Ok(()) => saved = Some(lease.clone()),
                Err(e) => warn!(path = %lease_file.display(), error = %e, "cannot save the lease"),
            }
        }
        if let Some(n) = due(&lease, now, &mut given) {
            info!(before = %human(n), "telling the renter the rental ends soon");
            if let Err(e) = wall(&reminder(&lease, now)).await {
                warn!(error = %e, "wall failed");
            }
        }
        tokio::time::sleep(next_wake(&lease, Utc::now(), &given)).await;
    }
}

/// Save the lease in `path` (0644: for the renter's user to read), replaced whole. A small file
/// on the container's tmpfs: written directly, even from the async keeper.
pub fn save(path: &Path, lease: &Lease) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, lease.to_wire().to_string())?;
    std::fs::rename(&tmp, path)
}

/// `wall` (util-linux) to every logged-in terminal; the text goes on stdin, never a shell.
async fn wall(text: &str) -> std::io::Result<()> {
    let mut child = Command::new("wall")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(text.as_bytes()).await?;
    stdin.write_all(b"\n").await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(in_secs: i64) -> (Lease, DateTime<Utc>) {
        let now = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        (
            Lease {
                expiration: now + chrono::Duration::seconds(in_secs),
                notices: vec![
                    Duration::from_hours(24),
                    Duration::from_hours(1),
                    Duration::from_mins(10),
                ],
                contact: Some(("vps.example.net".into(), 6001)),
            },
            now,
        )
    }

    #[test]
    fn reminders_come_once_each_and_only_the_most_urgent_of_a_late_start() {
        let (l, now) = lease(3 * 86_400);
        let mut given = Vec::new();
        assert_eq!(due(&l, now, &mut given), None);
        let at = |secs_left: i64| l.expiration - chrono::Duration::seconds(secs_left);
        assert_eq!(
            due(&l, at(86_400), &mut given),
            Some(Duration::from_hours(24))
        );
        assert_eq!(due(&l, at(86_000), &mut given), None);
        assert_eq!(
            due(&l, at(3_600), &mut given),
            Some(Duration::from_hours(1))
        );
        assert_eq!(due(&l, at(599), &mut given), Some(Duration::from_mins(10)));
        assert_eq!(due(&l, at(10), &mut given), None);
        assert_eq!(due(&l, at(-5), &mut given), None);

        // Started 50 minutes before the end: one message (the hour's), not the day's too.
        let mut given = Vec::new();
        assert_eq!(
            due(&l, at(3_000), &mut given),
            Some(Duration::from_hours(1))
        );
        assert_eq!(given.len(), 2);
    }

    #[test]
    fn the_next_wake_is_the_next_threshold_or_the_poll() {
        let (l, now) = lease(3_605);
        assert_eq!(next_wake(&l, now, &[]), Duration::from_millis(5_050));
        let (l, now) = lease(86_400 * 3);
        assert_eq!(next_wake(&l, now, &[]), POLL + Duration::from_millis(50));
    }

    #[test]
    fn the_banner_says_when_and_what_happens() {
        let (l, now) = lease(3 * 3600 + 12 * 60);
        let text = describe(&l, now);
        assert!(
            text.contains("ends 2026-11-26 13:12 UTC (in 3 h 12 min)"),
            "{text}"
        );
        assert!(text.contains("/media/storage"), "{text}");
        let (l, now) = lease(-1);
        assert!(describe(&l, now).contains("ended"));
        assert_eq!(human(Duration::from_hours(25)), "1 d 1 h");
        assert_eq!(human(Duration::from_secs(45)), "45 s");
        assert_eq!(human(Duration::from_secs(61)), "2 min");
    }

    #[test]
    fn the_saved_lease_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lease.json");
        let (l, _) = lease(600);
        std::fs::write(&path, l.to_wire().to_string()).unwrap();
        assert_eq!(saved_lease(&path).unwrap(), l);
        let e = saved_lease(&tmp.path().join("missing")).unwrap_err();
        assert!(e.contains("the connector writes it"), "{e}");
    }

    #[test]
    fn the_wire_lease_is_checked() {
        let v = json!({"expiration": "2026-11-26T10:00:00Z", "notices": [3600, 600]});
        let l = Lease::from_wire(&v).unwrap();
        assert_eq!(
            l.notices,
            [Duration::from_hours(1), Duration::from_mins(10)]
        );
        assert_eq!(l.contact, None);
        let v = json!({"expiration": "2026-11-26T10:00:00Z", "notices": [], "server": "p2pvps.net", "port": 6001});
        assert_eq!(
            Lease::from_wire(&v).unwrap().contact,
            Some(("p2pvps.net".into(), 6001))
        );
        let v = json!({"expiration": "2026-11-26T10:00:00Z", "notices": [], "server": "x; rm -rf /", "port": 6001});
        assert_eq!(
            Lease::from_wire(&v).unwrap().contact,
            None,
            "not a host name"
        );
        assert!(Lease::from_wire(&json!({"expiration": "soon", "notices": []})).is_none());
        assert!(
            Lease::from_wire(&json!({"expiration": "2026-11-26T10:00:00Z", "notices": [-1]}))
                .is_none()
        );
    }
}
