//! The tunnel's settings: which endpoint, which user, which port to ask for, where to send the
//! forwarded connections. They arrive as camelCase JSON (today from a file or stdin, later from the
//! governor's socket); every value is checked while parsing, so a `TunnelSettings` is always usable
//! and a bad value is reported with the name of its JSON key.

use std::fmt;
use std::io::Read as _;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKey};
use serde::Deserialize;
use thiserror::Error;

use crate::secret::Secret;

const DEFAULT_BIND_ADDRESS: &str = "0.0.0.0";
const DEFAULT_LOCAL_ADDR: &str = "127.0.0.1:22";
/// 15 s × (3 + 1) unanswered keepalives: a dead link is noticed within 60 s (russh gives up after
/// `keepaliveMax` keepalives went unanswered and the next interval elapsed).
const DEFAULT_KEEPALIVE_SECONDS: i64 = 15;
const DEFAULT_KEEPALIVE_MAX: i64 = 3;
/// Longer than this and a dead link goes unnoticed for hours; a typo, not a choice.
const MAX_KEEPALIVE_SECONDS: i64 = 3600;
const MAX_KEEPALIVE_COUNT: i64 = 100;

#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("cannot read the tunnel settings from {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tunnel settings are not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("tunnel settings: `{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Everything the tunnel keeper needs. Built only by parsing (see [`TunnelSettings::from_json`]),
/// so its fields hold checked values.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawSettings")]
pub struct TunnelSettings {
    /// The marketplace's tunnel endpoint (host name or IP address): `sshServer` in the device
    /// config.
    pub server: String,
    /// Its SSH port (6100 on the public server).
    pub server_port: NonZeroU16,
    /// The tunnel-only user on the endpoint; it may do nothing but remote forwards.
    pub user: String,
    /// How the connector proves it is allowed to use that user.
    pub credentials: Credentials,
    /// When set, the endpoint must present exactly this host key: a man in the middle (or a DNS
    /// hijack) would otherwise receive every renter's SSH connection.
    pub host_key: Option<HostKeyPin>,
    /// The port the endpoint listens on for this device: the port the renter types in `ssh -p`.
    /// Left out under the governor: the keeper then logs in at once and asks for the forward when
    /// the port follows on stdin (`{"remotePort": N}`), once the device is rented.
    pub remote_port: Option<NonZeroU16>,
    /// The address the endpoint binds that port to. `0.0.0.0` makes it public (the endpoint needs
    /// `GatewayPorts clientspecified`); tests use `127.0.0.1`.
    pub bind_address: String,
    /// Where forwarded connections go: the container's own sshd.
    pub local_addr: SocketAddr,
    /// How long the link may be silent before a keepalive is sent.
    pub keepalive_interval: Duration,
    /// How many unanswered keepalives mean the link is dead.
    pub keepalive_max: usize,
}

impl TunnelSettings {
    /// Reads the settings from a file, or from stdin when the path is `-` (how a supervisor hands
    /// over secrets without leaving them in a file or the environment).
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map(|_| text)
        } else {
            std::fs::read_to_string(path)
        }
        .map_err(|source| SettingsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Reads the settings from the first line of stdin, leaving the rest of it open (the governor
    /// keeps it open while it wants the tunnel).
    pub fn first_line_of_stdin() -> Result<Self, SettingsError> {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|source| SettingsError::Read {
                path: "stdin".into(),
                source,
            })?;
        Self::from_json(&line)
    }

    /// The rental's port, as the governor sends it after the settings: `{"remotePort": N}`.
    pub fn port_from_json(text: &str) -> Result<NonZeroU16, SettingsError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct RawPort {
            remote_port: i64,
        }
        let raw: RawPort = serde_json::from_str(text)?;
        port("remotePort", raw.remote_port)
    }

    pub fn from_json(text: &str) -> Result<Self, SettingsError> {
        let raw: RawSettings = serde_json::from_str(text)?;
        Self::try_from(raw)
    }

    /// `host:port` of the endpoint, for log lines and errors.
    pub fn endpoint(&self) -> String {
        if self.server.contains(':') {
            format!("[{}]:{}", self.server, self.server_port)
        } else {
            format!("{}:{}", self.server, self.server_port)
        }
    }
}

/// The ways to log in to the endpoint. At least one is always present.
#[derive(Debug, Clone)]
pub enum Credentials {
    Password(Secret),
    Key(ClientKey),
    /// Both given: the key is tried first and the password only if the endpoint refuses the key,
    /// so an operator can move devices from passwords to keys without a flag day.
    KeyOrPassword {
        key: ClientKey,
        password: Secret,
    },
}

/// A decoded private key for public-key authentication. Its `Debug` shows the public half only.
#[derive(Clone)]
pub struct ClientKey(Arc<PrivateKey>);

impl ClientKey {
    pub fn key(&self) -> Arc<PrivateKey> {
        Arc::clone(&self.0)
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClientKey({} {})",
            self.0.algorithm(),
            self.0.public_key().fingerprint(HashAlg::Sha256)
        )
    }
}

/// A pinned host key fingerprint in the form `ssh-keygen -l -E sha256` prints:
/// `SHA256:` and 43 characters of unpadded base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKeyPin(String);

impl HostKeyPin {
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some(b64) = s.strip_prefix("SHA256:") else {
            return Err(
                "must start with `SHA256:` (as `ssh-keygen -l -E sha256 -f KEY` prints)".into(),
            );
        };
        let ok_chars = b64
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
        if b64.len() != 43 || !ok_chars {
            return Err(format!(
                "must be `SHA256:` followed by 43 base64 characters, got {} characters after the prefix",
                b64.len()
            ));
        }
        // A round trip through ssh-key's parser rejects non-canonical base64, which could never
        // match the fingerprint we compute from the server's key.
        match s.parse::<russh::keys::ssh_key::Fingerprint>() {
            Ok(fp) if fp.to_string() == s => Ok(Self(s.to_owned())),
            _ => Err("is not a canonical SHA-256 fingerprint".into()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, seen: &str) -> bool {
        self.0 == seen
    }
}

impl fmt::Display for HostKeyPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The JSON as written; ports and counts are wide integers so that an out-of-range value is
/// reported with its key rather than as serde's anonymous "invalid value".
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSettings {
    server: String,
    server_port: i64,
    user: String,
    password: Option<Secret>,
    private_key: Option<Secret>,
    host_key: Option<String>,
    remote_port: Option<i64>,
    bind_address: Option<String>,
    local_addr: Option<String>,
    keepalive_seconds: Option<i64>,
    keepalive_max: Option<i64>,
}

impl TryFrom<RawSettings> for TunnelSettings {
    type Error = SettingsError;

    fn try_from(raw: RawSettings) -> Result<Self, SettingsError> {
        let server = token("server", raw.server)?;
        let server_port = port("serverPort", raw.server_port)?;
        let user = token("user", raw.user)?;
        let key = raw
            .private_key
            .map(|pem| {
                russh::keys::decode_secret_key(pem.expose(), None)
                    .map(|k| ClientKey(Arc::new(k)))
                    // The library's message names the format problem, never the key's bytes.
                    .map_err(|e| {
                        invalid(
                            "privateKey",
                            format!("is not an unencrypted OpenSSH private key: {e}"),
                        )
                    })
            })
            .transpose()?;
        let password = match raw.password {
            Some(p) if p.expose().is_empty() => {
                return Err(invalid(
                    "password",
                    "is empty (leave it out to use the key)",
                ));
            }
            other => other,
        };
        let credentials = match (key, password) {
            (Some(key), Some(password)) => Credentials::KeyOrPassword { key, password },
            (Some(key), None) => Credentials::Key(key),
            (None, Some(password)) => Credentials::Password(password),
            (None, None) => {
                return Err(invalid(
                    "password",
                    "or `privateKey` is required: the endpoint needs a way to log in",
                ));
            }
        };
        let host_key = raw
            .host_key
            .map(|s| HostKeyPin::parse(&s).map_err(|r| invalid("hostKey", r)))
            .transpose()?;
        let remote_port = raw.remote_port.map(|p| port("remotePort", p)).transpose()?;
        let bind_address = token(
            "bindAddress",
            raw.bind_address
                .unwrap_or_else(|| DEFAULT_BIND_ADDRESS.to_owned()),
        )?;
        let local_addr = raw
            .local_addr
            .as_deref()
            .unwrap_or(DEFAULT_LOCAL_ADDR)
            .parse::<SocketAddr>()
            .map_err(|e| invalid("localAddr", format!("must be IP:port ({e})")))?;
        let keepalive_seconds = bounded(
            "keepaliveSeconds",
            raw.keepalive_seconds.unwrap_or(DEFAULT_KEEPALIVE_SECONDS),
            1,
            MAX_KEEPALIVE_SECONDS,
        )?;
        let keepalive_max = bounded(
            "keepaliveMax",
            raw.keepalive_max.unwrap_or(DEFAULT_KEEPALIVE_MAX),
            1,
            MAX_KEEPALIVE_COUNT,
        )?;
        Ok(Self {
            server,
            server_port,
            user,
            credentials,
            host_key,
            remote_port,
            bind_address,
            local_addr,
            keepalive_interval: Duration::from_secs(
                u64::try_from(keepalive_seconds).expect("bounded above 0"),
            ),
            keepalive_max: usize::try_from(keepalive_max).expect("bounded above 0"),
        })
    }
}

/// A non-empty word without spaces or control characters: a host name, user or address that goes
/// into SSH protocol fields and log lines.
fn token(field: &'static str, s: String) -> Result<String, SettingsError> {
    if s.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    if s.len() > 255 {
        return Err(invalid(
            field,
            format!("is {} bytes long (at most 255)", s.len()),
        ));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(field, "contains a space or control character"));
    }
    Ok(s)
}

fn port(field: &'static str, n: i64) -> Result<NonZeroU16, SettingsError> {
    u16::try_from(n)
        .ok()
        .and_then(NonZeroU16::new)
        .ok_or_else(|| invalid(field, format!("must be a port number 1-65535, got {n}")))
}

fn bounded(field: &'static str, n: i64, min: i64, max: i64) -> Result<i64, SettingsError> {
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(invalid(field, format!("must be {min}-{max}, got {n}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const PIN: &str = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";

    fn minimal() -> Value {
        json!({
            "server": "tunnel.example.net",
            "serverPort": 6100,
            "user": "sshuser",
            "password": "s3cret-pass",
            "remotePort": 6001,
        })
    }

    fn parse(v: &Value) -> Result<TunnelSettings, SettingsError> {
        TunnelSettings::from_json(&v.to_string())
    }

    fn error_of(v: &Value) -> String {
        parse(v).expect_err("must be rejected").to_string()
    }

    fn with(key: &str, value: Value) -> Value {
        let mut v = minimal();
        v[key] = value;
        v
    }

    /// A throwaway ed25519 key made for these tests only (`ssh-keygen -t ed25519 -N ''`).
    const TEST_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDrTkJYe1DuAnPAhLIhjBTWoTDdvvJpxCUasevARO1rFAAAAJg7XBW5O1wV
uQAAAAtzc2gtZWQyNTUxOQAAACDrTkJYe1DuAnPAhLIhjBTWoTDdvvJpxCUasevARO1rFA
AAAEC7KQYBhmZXd+wUpT8r3Vzxu6ubQGRXbtdPI2hZ9XwQh+tOQlh7UO4Cc8CEsiGMFNah
MN2+8mnEJRqx68BE7WsUAAAAE2Nvbm5lY3Rvci11bml0LXRlc3QBAg==
-----END OPENSSH PRIVATE KEY-----
";

    fn test_key_pem() -> String {
        TEST_KEY.to_owned()
    }

    #[test]
    fn defaults_fill_the_optional_keys() {
        let s = parse(&minimal()).unwrap();
        assert_eq!(s.server, "tunnel.example.net");
        assert_eq!(s.server_port.get(), 6100);
        assert_eq!(s.remote_port.map(NonZeroU16::get), Some(6001));
        assert_eq!(s.bind_address, "0.0.0.0");
        assert_eq!(s.local_addr, "127.0.0.1:22".parse().unwrap());
        assert_eq!(s.keepalive_interval, Duration::from_secs(15));
        assert_eq!(s.keepalive_max, 3);
        assert!(s.host_key.is_none());
        assert!(
            matches!(s.credentials, Credentials::Password(ref p) if p.expose() == "s3cret-pass")
        );
        assert_eq!(s.endpoint(), "tunnel.example.net:6100");
    }

    #[test]
    fn every_key_is_read() {
        let mut v = minimal();
        v["hostKey"] = json!(PIN);
        v["bindAddress"] = json!("127.0.0.1");
        v["localAddr"] = json!("127.0.0.1:3100");
        v["keepaliveSeconds"] = json!(2);
        v["keepaliveMax"] = json!(5);
        v["privateKey"] = json!(test_key_pem());
        let s = parse(&v).unwrap();
        assert_eq!(s.host_key.unwrap().as_str(), PIN);
        assert_eq!(s.bind_address, "127.0.0.1");
        assert_eq!(s.local_addr.port(), 3100);
        assert_eq!(s.keepalive_interval, Duration::from_secs(2));
        assert_eq!(s.keepalive_max, 5);
        assert!(matches!(s.credentials, Credentials::KeyOrPassword { .. }));
    }

    #[test]
    fn key_alone_is_enough() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("password");
        v["privateKey"] = json!(test_key_pem());
        let s = parse(&v).unwrap();
        assert!(matches!(s.credentials, Credentials::Key(_)));
    }

    #[test]
    fn ports_out_of_range_name_their_key() {
        for (key, bad) in [("serverPort", 0), ("remotePort", 65536), ("serverPort", -1)] {
            let e = error_of(&with(key, json!(bad)));
            assert!(e.contains(key) && e.contains("1-65535"), "{e}");
        }
    }

    #[test]
    fn empty_or_spaced_words_name_their_key() {
        for key in ["server", "user", "bindAddress"] {
            assert!(error_of(&with(key, json!(""))).contains(key));
            assert!(error_of(&with(key, json!("a b"))).contains(key));
        }
        assert!(error_of(&with("user", json!("root\n"))).contains("control"));
    }

    #[test]
    fn a_login_method_is_required() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("password");
        let e = error_of(&v);
        assert!(e.contains("password") && e.contains("privateKey"), "{e}");
        assert!(error_of(&with("password", json!(""))).contains("password"));
    }

    #[test]
    fn a_broken_key_is_rejected_without_echoing_it() {
        let e = error_of(&with(
            "privateKey",
            json!(
                "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAsecretbytes\n-----END OPENSSH PRIVATE KEY-----\n"
            ),
        ));
        assert!(e.contains("privateKey"), "{e}");
        assert!(!e.contains("secretbytes"), "{e}");
    }

    #[test]
    fn host_key_pins_are_checked() {
        assert!(parse(&with("hostKey", json!(PIN))).is_ok());
        for bad in [
            "uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
            "MD5:aa:bb",
            "SHA256:short",
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s=",
            "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2!",
        ] {
            let e = error_of(&with("hostKey", json!(bad)));
            assert!(e.contains("hostKey"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_local_addr_and_keepalives_name_their_key() {
        assert!(error_of(&with("localAddr", json!("localhost"))).contains("localAddr"));
        assert!(error_of(&with("keepaliveSeconds", json!(0))).contains("keepaliveSeconds"));
        assert!(error_of(&with("keepaliveMax", json!(0))).contains("keepaliveMax"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = error_of(&with("remotePrt", json!(1)));
        assert!(e.contains("remotePrt"), "{e}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut v = minimal();
        v["privateKey"] = json!(test_key_pem());
        let s = parse(&v).unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cret-pass"), "{dbg}");
        assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
        assert!(dbg.contains("ClientKey(ssh-ed25519 SHA256:"), "{dbg}");
    }

    #[test]
    fn the_port_may_follow_in_a_line_of_its_own() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("remotePort");
        assert_eq!(parse(&v).unwrap().remote_port, None);
        let p = TunnelSettings::port_from_json(r#"{"remotePort": 40022}"#).unwrap();
        assert_eq!(p.get(), 40022);
        for bad in [
            r#"{"remotePort": 0}"#,
            r#"{"remotePort": 70000}"#,
            r#"{"remotePort": "22"}"#,
            r#"{"remotePort": 22, "localAddr": "1.2.3.4:22"}"#,
            "22",
        ] {
            assert!(TunnelSettings::port_from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deserialises_inside_a_larger_message() {
        #[derive(Deserialize)]
        struct Envelope {
            tunnel: TunnelSettings,
        }
        let e: Envelope = serde_json::from_value(json!({ "tunnel": minimal() })).unwrap();
        assert_eq!(e.tunnel.user, "sshuser");
        let bad = json!({ "tunnel": with("remotePort", json!(0)) });
        let err = serde_json::from_value::<Envelope>(bad)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("remotePort"), "{err}");
    }
}
