//! What the tunnel is doing, as reported to whoever watches it (the log today, the governor's
//! `status` later). It is serialisable so that it can cross a socket unchanged.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum TunnelState {
    /// Connecting, logging in and asking for the forward.
    Connecting,
    /// Logged in, waiting for the rental's port (the device is not rented yet): asking for the
    /// forward then takes one round trip.
    Standby,
    /// The forward is in place: renters can log in.
    Up {
        /// When the forward was granted.
        since: DateTime<Utc>,
    },
    /// The last attempt failed or the session ended; the next attempt follows after `retry_in`.
    Down {
        /// What went wrong, in words an owner can act on.
        error: String,
        #[serde(rename = "retryInSeconds", with = "seconds")]
        retry_in: Duration,
    },
}

impl TunnelState {
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Up { .. })
    }
}

impl fmt::Display for TunnelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connecting => f.write_str("connecting"),
            Self::Standby => f.write_str("logged in, waiting for a rental's port"),
            Self::Up { since } => write!(
                f,
                "up since {}",
                since.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
            Self::Down { error, retry_in } => write!(
                f,
                "down ({error}); retrying in {:.1} s",
                retry_in.as_secs_f64()
            ),
        }
    }
}

/// Durations as fractional seconds: readable in JSON, unlike serde's `{secs, nanos}`.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_shape_round_trips() {
        let since = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let cases = [
            (TunnelState::Connecting, json!({"state": "connecting"})),
            (
                TunnelState::Up { since },
                json!({"state": "up", "since": "2026-01-02T03:04:05Z"}),
            ),
            (
                TunnelState::Down {
                    error: "refused".into(),
                    retry_in: Duration::from_millis(2500),
                },
                json!({"state": "down", "error": "refused", "retryInSeconds": 2.5}),
            ),
        ];
        for (state, expected) in cases {
            assert_eq!(serde_json::to_value(&state).unwrap(), expected);
            let back: TunnelState = serde_json::from_value(expected).unwrap();
            assert_eq!(back, state);
        }
    }

    #[test]
    fn display_is_one_readable_line() {
        let down = TunnelState::Down {
            error: "the server refused the forward".into(),
            retry_in: Duration::from_millis(1500),
        };
        assert_eq!(
            down.to_string(),
            "down (the server refused the forward); retrying in 1.5 s"
        );
        assert_eq!(TunnelState::Connecting.to_string(), "connecting");
    }
}
