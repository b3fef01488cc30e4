//! What the owner's page and `/metrics` count: check-ins and wipes since the governor started, kept
//! in memory (Prometheus computes rates across restarts from the counters' resets), and the
//! Prometheus text exposition of a device's figures.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::state::Phase;

/// Counters the lifecycle bumps; cheap to share (behind the hub's `Arc`).
#[derive(Debug, Default)]
pub struct Counters {
    inner: Mutex<Counted>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counted {
    pub check_ins_ok: u64,
    pub check_ins_failed: u64,
    pub wipes: u64,
    /// Seconds spent wiping, all wipes together.
    pub wipe_seconds: f64,
    /// The last wipe's duration, in seconds.
    pub last_wipe_seconds: Option<f64>,
}

impl Counters {
    pub fn check_in(&self, ok: bool) {
        let mut c = self.inner.lock().unwrap();
        if ok {
            c.check_ins_ok += 1;
        } else {
            c.check_ins_failed += 1;
        }
    }

    pub fn wiped(&self, took: Duration) {
        let mut c = self.inner.lock().unwrap();
        c.wipes += 1;
        c.wipe_seconds += took.as_secs_f64();
        c.last_wipe_seconds = Some(took.as_secs_f64());
    }

    pub fn get(&self) -> Counted {
        *self.inner.lock().unwrap()
    }
}

/// What `p2pvps_phase` calls the time before the lifecycle's first phase.
const NOT_STARTED: &str = "not-started";

/// One device's figures at one instant, as `/metrics` shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub device_id: String,
    pub phase: String,
    pub rental_seconds_left: Option<i64>,
    pub tunnel_up: bool,
    pub renter_sessions: u32,
    pub storage_used_bytes: Option<u64>,
    pub storage_free_bytes: Option<u64>,
    pub rentals_completed: u64,
    pub counted: Counted,
    pub rss_bytes: Option<u64>,
}

/// One metric family: its name, type, help and `(labels, value)` samples.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, String)>,
}

/// The Prometheus text format (version 0.0.4) of `s`.
pub fn render(s: &Sample) -> String {
    let mut out = String::new();
    // A figure not known now is left out whole, not shown as 0.
    for f in families(s).iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in &f.samples {
            let _ = writeln!(out, "{}{labels} {value}", f.name);
        }
    }
    out
}

fn families(s: &Sample) -> [Family; 13] {
    let device = format!("device=\"{}\"", escape(&s.device_id));
    let with = |label: &str| format!("{{{device},{label}}}");
    let one = |v: String| vec![(format!("{{{device}}}"), v)];
    let c = &s.counted;
    let gauge = |name, help, samples| Family {
        name,
        kind: "gauge",
        help,
        samples,
    };
    let counter = |name, help, samples| Family {
        name,
        kind: "counter",
        help,
        samples,
    };
    // Each phase a value of `p2pvps_phase{phase="…"}`: 1 for the current one.
    let phases = std::iter::once(NOT_STARTED)
        .chain(Phase::ALL.map(Phase::as_str))
        .map(|p| {
            (
                with(&format!("phase=\"{p}\"")),
                u8::from(p == s.phase).to_string(),
            )
        })
        .collect();
    let optional = |v: Option<String>| v.map(one).unwrap_or_default();
    [
        gauge(
            "p2pvps_info",
            "The governor's version (always 1).",
            vec![(
                with(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
                "1".into(),
            )],
        ),
        gauge(
            "p2pvps_phase",
            "The lifecycle's phase: 1 for the current one.",
            phases,
        ),
        gauge(
            "p2pvps_rental_seconds_left",
            "Seconds until the rental in force ends.",
            optional(s.rental_seconds_left.map(|l| l.max(0).to_string())),
        ),
        gauge(
            "p2pvps_tunnel_up",
            "1 while the reverse tunnel forwards the renter's port.",
            one(u8::from(s.tunnel_up).to_string()),
        ),
        gauge(
            "p2pvps_renter_sessions",
            "Renter SSH sessions open, as the renter's container reports them.",
            one(s.renter_sessions.to_string()),
        ),
        gauge(
            "p2pvps_storage_used_bytes",
            "Bytes used on the rental's storage volume.",
            optional(s.storage_used_bytes.map(|v| v.to_string())),
        ),
        gauge(
            "p2pvps_storage_free_bytes",
            "Bytes free on the rental's storage volume.",
            optional(s.storage_free_bytes.map(|v| v.to_string())),
        ),
        counter(
            "p2pvps_check_ins_total",
            "Check-ins with the marketplace since the governor started, by result.",
            vec![
                (with("result=\"ok\""), c.check_ins_ok.to_string()),
                (with("result=\"failed\""), c.check_ins_failed.to_string()),
            ],
        ),
        counter(
            "p2pvps_rentals_completed_total",
            "Rentals ended and wiped on this device.",
            one(s.rentals_completed.to_string()),
        ),
        counter(
            "p2pvps_wipes_total",
            "Storage wipes since the governor started.",
            one(c.wipes.to_string()),
        ),
        counter(
            "p2pvps_wipe_seconds_total",
            "Seconds spent wiping since the governor started.",
            one(format!("{:.3}", c.wipe_seconds)),
        ),
        gauge(
            "p2pvps_last_wipe_seconds",
            "How long the last wipe took.",
            optional(c.last_wipe_seconds.map(|l| format!("{l:.3}"))),
        ),
        gauge(
            "p2pvps_governor_resident_bytes",
            "The governor's resident memory.",
            optional(s.rss_bytes.map(|v| v.to_string())),
        ),
    ]
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// This process's resident memory (`VmRSS`), in bytes.
pub fn own_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_each_figure_once_with_its_type() {
        let counters = Counters::default();
        counters.check_in(true);
        counters.check_in(true);
        counters.check_in(false);
        counters.wiped(Duration::from_millis(1500));
        let text = render(&Sample {
            device_id: "5a2608cfd7df9800266a339d".into(),
            phase: "serving".into(),
            rental_seconds_left: Some(3600),
            tunnel_up: true,
            renter_sessions: 2,
            storage_used_bytes: Some(10),
            storage_free_bytes: Some(20),
            rentals_completed: 4,
            counted: counters.get(),
            rss_bytes: own_rss(),
        });
        let d = r#"device="5a2608cfd7df9800266a339d""#;
        for line in [
            format!("p2pvps_phase{{{d},phase=\"serving\"}} 1"),
            format!("p2pvps_phase{{{d},phase=\"wiping\"}} 0"),
            format!("p2pvps_rental_seconds_left{{{d}}} 3600"),
            format!("p2pvps_tunnel_up{{{d}}} 1"),
            format!("p2pvps_check_ins_total{{{d},result=\"ok\"}} 2"),
            format!("p2pvps_check_ins_total{{{d},result=\"failed\"}} 1"),
            format!("p2pvps_wipes_total{{{d}}} 1"),
            format!("p2pvps_last_wipe_seconds{{{d}}} 1.500"),
            "# TYPE p2pvps_check_ins_total counter".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("p2pvps_governor_resident_bytes{"), "{text}");
        assert_eq!(text.matches("# TYPE p2pvps_phase ").count(), 1);
    }

    #[test]
    fn figures_not_known_are_left_out() {
        let text = render(&Sample {
            phase: "registering".into(),
            ..Sample::default()
        });
        assert!(!text.contains("p2pvps_rental_seconds_left"), "{text}");
        assert!(!text.contains("p2pvps_storage_used_bytes"), "{text}");
        assert!(!text.contains("p2pvps_last_wipe_seconds"), "{text}");
    }
}
