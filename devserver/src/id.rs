//! Device ids: MongoDB ObjectIds, exactly 24 hex digits, as the marketplace contract says.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A checked device id, kept in lowercase (MongoDB treats `5A26…` and `5a26…` as the same ObjectId).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

/// A string that is not 24 hex digits was given as a device id.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid device id {id:?}: expected exactly 24 hex digits (a MongoDB ObjectId)")]
pub struct InvalidDeviceId {
    /// The rejected text.
    pub id: String,
}

impl DeviceId {
    /// The id in lowercase hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DeviceId {
    type Err = InvalidDeviceId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(InvalidDeviceId { id: s.to_owned() })
        }
    }
}

impl TryFrom<String> for DeviceId {
    type Error = InvalidDeviceId;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::DeviceId;

    #[test]
    fn accepts_24_hex_digits_and_lowercases() {
        let id: DeviceId = "5A2608CFD7DF9800266A339D".parse().unwrap();
        assert_eq!(id.as_str(), "5a2608cfd7df9800266a339d");
    }

    #[test]
    fn rejects_wrong_length_and_non_hex() {
        assert!("5a2608cfd7df9800266a339".parse::<DeviceId>().is_err());
        assert!("5a2608cfd7df9800266a339d0".parse::<DeviceId>().is_err());
        assert!("5a2608cfd7df9800266a339g".parse::<DeviceId>().is_err());
        assert!("".parse::<DeviceId>().is_err());
    }
}
