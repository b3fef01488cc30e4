//! Checked wrapper types: a value of one of these has passed validation, so code that holds it never
//! re-checks, and nothing unchecked from a config file or a server answer reaches a command line.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value was refused; the caller adds which key or field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A marketplace device id: a MongoDB ObjectId, exactly 24 hex digits (kept lower-case).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(Invalid(format!(
                "must be exactly 24 hex digits (the id the marketplace shows for your device), got {:?}",
                shorten(s)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A TCP port, 1-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port(u16);

impl Port {
    pub fn new(n: i64) -> Result<Self, Invalid> {
        match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(Self(p)),
            _ => Err(Invalid(format!("port must be 1-65535, got {n}"))),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Login names the governor must never create for a renter: they exist in the image already.
const RESERVED_USERS: &[&str] = &[
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "gnats",
    "nobody",
    "sshd",
    "messagebus",
    "_apt",
    "sudo",
    "staff",
    "users",
    "adm",
    "shadow",
    "utmp",
    "operator",
    "docker",
];

/// A renter's login name from the marketplace, checked as a POSIX login name so that a hostile server
/// cannot smuggle an option, a path or a system account into `useradd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        // The marketplace generates alphanumeric names, so a leading digit must pass (Debian's
        // useradd takes it); an all-digit name would read as a uid to chown and friends.
        let first_ok = s
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        let all_digits = s.bytes().all(|b| b.is_ascii_digit());
        let rest_ok = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !(first_ok && rest_ok && !all_digits && s.len() <= 32) {
            return Err(Invalid(format!(
                "username must be a login name (letters, digits, _ . -, not all digits, not starting with - or .; at most 32), got {:?}",
                shorten(s)
            )));
        }
        if RESERVED_USERS.contains(&s.to_ascii_lowercase().as_str()) || s.starts_with("systemd-") {
            return Err(Invalid(format!("username {s:?} is a system account")));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret (renter password, tunnel password). It has no `Display` and its `Debug` is redacted, so
/// it cannot reach a log by accident; it is never serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A renter password: 1-128 characters, no control characters (it travels in a `user:pass` line).
    pub fn password(s: &str) -> Result<Self, Invalid> {
        let len = s.chars().count();
        if len == 0 || len > 128 {
            return Err(Invalid(format!(
                "password must be 1-128 characters, got {len}"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(Invalid("password contains a control character".into()));
        }
        Ok(Self(s.to_owned()))
    }

    /// A renter's storage passphrase: 8 to 512 characters, no control characters (a terminal cannot
    /// type them back reliably after a reboot).
    pub fn passphrase(s: &str) -> Result<Self, Invalid> {
        let len = s.chars().count();
        if !(8..=512).contains(&len) {
            return Err(Invalid(format!(
                "passphrase must be 8-512 characters, got {len}"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(Invalid("passphrase contains a control character".into()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A password in the form `/etc/shadow` keeps (SHA-512-crypt, `$6$…`). This is what the state file and
/// the container receive, so the plain password exists only in memory during registration.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub fn of(password: &Secret) -> Self {
        Self::with_salt(password, &rand::random())
    }

    /// glibc's crypt reads at most 16 salt characters: 12 random bytes encode to exactly 16, so
    /// the hash string is the one glibc computes (the crate's default 22-character salt is not).
    fn with_salt(password: &Secret, salt: &[u8; 12]) -> Self {
        use sha_crypt::PasswordHasher as _;
        let hash = sha_crypt::ShaCrypt::default()
            .hash_password_with_salt(password.expose().as_bytes(), salt)
            .expect("SHA-512-crypt of a short password cannot fail");
        Self(hash.to_string())
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = s.starts_with("$6$")
            && s.len() < 256
            && s.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Invalid("not a SHA-512-crypt hash".into()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(***)")
    }
}

/// Cut a hostile value short before it goes into an error message.
pub(crate) fn shorten(s: &str) -> String {
    shorten_to(s, 40)
}

/// As [`shorten`], for longer texts (a tunnel error names two fingerprints).
pub(crate) fn shorten_to(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head}…")
    }
}

macro_rules! serde_via_str {
    ($ty:ty, $parse:path) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_via_str!(DeviceId, DeviceId::parse);
serde_via_str!(Username, Username::parse);
serde_via_str!(PasswordHash, PasswordHash::parse);

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Port::new(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_accepts_24_hex_and_lowercases() {
        let id = DeviceId::parse("5A2608CFD7DF9800266A339D").unwrap();
        assert_eq!(id.as_str(), "5a2608cfd7df9800266a339d");
    }

    #[test]
    fn device_id_rejects_wrong_length_and_non_hex() {
        for bad in [
            "",
            "5a2608cfd7df9800266a339",
            "5a2608cfd7df9800266a339dd",
            "5a2608cfd7df9800266a339g",
        ] {
            let err = DeviceId::parse(bad).unwrap_err();
            assert!(err.0.contains("24 hex digits"), "{bad}: {err}");
        }
    }

    #[test]
    fn port_range() {
        assert_eq!(Port::new(6100).unwrap().get(), 6100);
        assert!(Port::new(0).unwrap_err().0.contains("1-65535"));
        assert!(Port::new(65536).is_err());
        assert!(Port::new(-1).is_err());
    }

    #[test]
    fn usernames_from_a_hostile_server_are_refused() {
        assert!(Username::parse("aB3xY9zQ1k").is_ok());
        assert!(Username::parse("_renter-1.x").is_ok());
        assert!(
            Username::parse("2MWwJWY94o").is_ok(),
            "the marketplace's names may start with a digit"
        );
        for bad in [
            "",
            "-rf",
            "root",
            "ROOT",
            "a b",
            "a;rm -rf /",
            "../etc",
            "1234567890",
            ".hidden",
            "systemd-network",
            &"a".repeat(33),
            "é",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn passwords_must_be_printable() {
        assert!(Secret::password("Xy7pQ2mN0a").is_ok());
        assert!(Secret::password("").is_err());
        assert!(
            Secret::password("a\nroot:x")
                .unwrap_err()
                .0
                .contains("control")
        );
        assert!(Secret::password(&"x".repeat(129)).is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::password("hunter2hunter2").unwrap();
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }

    #[test]
    fn password_hash_is_what_glibc_computes() {
        // Known answer from glibc: `openssl passwd -6 -salt 5Qk/5Qk/5Qk/5Qk/ pw1` prints the same
        // digest (without the explicit default rounds, which glibc accepts and keeps).
        let h = PasswordHash::with_salt(&Secret::password("pw1").unwrap(), &[7; 12]);
        assert_eq!(
            h.as_str(),
            "$6$rounds=5000$5Qk/5Qk/5Qk/5Qk/$SQZSyZe2yI/OnDSkSgIqDjSZebCIHUmwqDxA2ebRN2DohCrRhMQfxdDPm.QullCYaMdlrLaP48eQnbCqAn74v/"
        );
    }

    #[test]
    fn password_hash_verifies_and_hides() {
        use sha_crypt::PasswordVerifier as _;
        let pw = Secret::password("Xy7pQ2mN0a").unwrap();
        let h = PasswordHash::of(&pw);
        assert!(h.as_str().starts_with("$6$"));
        assert!(!h.as_str().contains("Xy7pQ2mN0a"));
        let parsed = sha_crypt::PasswordHashRef::new(h.as_str()).unwrap();
        assert!(
            sha_crypt::ShaCrypt::default()
                .verify_password(b"Xy7pQ2mN0a", parsed)
                .is_ok()
        );
        assert!(
            sha_crypt::ShaCrypt::default()
                .verify_password(b"wrong", parsed)
                .is_err()
        );
        assert_eq!(format!("{h:?}"), "PasswordHash(***)");
        assert!(PasswordHash::parse("x:y").is_err());
    }
}
