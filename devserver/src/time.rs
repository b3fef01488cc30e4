//! Timestamps as the marketplace writes them: JavaScript's `Date.prototype.toISOString`, that is
//! UTC with exactly three fractional digits and a `Z` (`2026-11-25T21:01:15.123Z`).

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

/// The current time, cut to milliseconds like a JavaScript `Date`, so that what is stored, what is
/// sent and what is read back from the state file are the same instant.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// Formats like `toISOString`.
pub fn to_iso(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses any RFC 3339 timestamp (any offset), as UTC cut to milliseconds.
pub fn parse_iso(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc).trunc_subsecs(3))
}

/// `#[serde(with = "crate::time::iso")]` for a `DateTime<Utc>`.
pub mod iso {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_iso(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_iso(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "crate::time::iso_opt")]` for an `Option<DateTime<Utc>>` (`null` when absent).
pub mod iso_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` hands us `&Option<T>`
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::to_iso(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse_iso(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    #[test]
    fn formats_like_javascript() {
        let t = Utc.with_ymd_and_hms(2026, 11, 25, 21, 1, 15).unwrap();
        assert_eq!(super::to_iso(&t), "2026-11-25T21:01:15.000Z");
        let parsed = super::parse_iso("2026-11-25T22:01:15.123456+01:00").unwrap();
        assert_eq!(super::to_iso(&parsed), "2026-11-25T21:01:15.123Z");
    }
}
