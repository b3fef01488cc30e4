//! The marketplace's client API (DESIGN.md §2): register, check-in, expiration.
//!
//! Every answer is treated as untrusted: bodies are capped, every field is validated into a checked
//! type, and a refusal keeps the status and the (shortened, plain-text) body for the log.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde_json::Value;

use crate::clock::TimeSource;
use crate::types::{DeviceId, Port, Secret, Username, shorten};

pub mod fake;

pub use fake::FakeMarketplace;

/// Larger answers are refused: the real ones are well under 2 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Each call gives up after this long; the lifecycle retries with backoff.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MarketplaceError {
    #[error("{call} {url}: server unreachable: {source}")]
    Unreachable {
        call: &'static str,
        url: String,
        source: reqwest::Error,
    },
    #[error("{call} {url}: server answered {status}: {body}")]
    Refused {
        call: &'static str,
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{call} {url}: answer larger than {BODY_LIMIT} bytes")]
    TooLarge { call: &'static str, url: String },
    #[error("{call} {url}: unusable answer: {reason}")]
    BadAnswer {
        call: &'static str,
        url: String,
        reason: String,
    },
    /// Most often: no CA certificates on the system (the ca-certificates package).
    #[error("cannot build the HTTP client: {}", chain(.0))]
    Client(reqwest::Error),
}

/// An error and its sources, `a: b: c` (reqwest's own text is only "builder error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl MarketplaceError {
    /// The server does not know this device (404) or refuses its id (422): an owner must act.
    pub fn is_unknown_device(&self) -> bool {
        matches!(self, Self::Refused { status, .. }
            if *status == StatusCode::NOT_FOUND || *status == StatusCode::UNPROCESSABLE_ENTITY)
    }
}

/// What the device offers, sent at registration. Strings, as the marketplace stores them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Specs {
    pub memory: String,
    pub disk_space: String,
    pub processor: String,
    pub internet_speed: String,
}

/// A rental as registration returns it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub username: Username,
    pub password: Secret,
    /// The port the tunnel endpoint forwards to this device's container.
    pub port: Port,
    pub expiration: DateTime<Utc>,
}

/// The three calls the lifecycle makes, behind a trait so its tests can run on a paused clock.
pub trait MarketplaceApi: Send + Sync {
    fn register(
        &self,
        specs: &Specs,
    ) -> impl Future<Output = Result<Lease, MarketplaceError>> + Send;
    fn check_in(&self) -> impl Future<Output = Result<(), MarketplaceError>> + Send;
    fn expiration(&self) -> impl Future<Output = Result<DateTime<Utc>, MarketplaceError>> + Send;
}

/// Shared ownership (a test keeps a handle on the fake the lifecycle uses).
impl<T: MarketplaceApi> MarketplaceApi for std::sync::Arc<T> {
    fn register(
        &self,
        specs: &Specs,
    ) -> impl Future<Output = Result<Lease, MarketplaceError>> + Send {
        (**self).register(specs)
    }
    fn check_in(&self) -> impl Future<Output = Result<(), MarketplaceError>> + Send {
        (**self).check_in()
    }
    fn expiration(&self) -> impl Future<Output = Result<DateTime<Utc>, MarketplaceError>> + Send {
        (**self).expiration()
    }
}

/// The REST client for one device.
#[derive(Debug, Clone)]
pub struct Marketplace {
    base: Url,
    device: DeviceId,
    http: reqwest::Client,
    /// Told the server's `Date` of every answer: a second opinion on the time (`clock.rs`).
    time: Option<TimeSource>,
}

impl Marketplace {
    pub fn new(base: &Url, device: DeviceId) -> Result<Self, MarketplaceError> {
        Self::with_timeout(base, device, CALL_TIMEOUT)
    }

    /// As `new`, with another per-call timeout.
    pub fn with_timeout(
        base: &Url,
        device: DeviceId,
        timeout: Duration,
    ) -> Result<Self, MarketplaceError> {
        // reqwest is built without a default TLS provider: ring keeps the binary small. Installing
        // it again is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("p2pvps-governor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(MarketplaceError::Client)?;
        let mut base = base.clone();
        // Url::join replaces the last segment unless the base ends with a slash.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            base,
            device,
            http,
            time: None,
        })
    }

    /// Give every answer's `Date` to `time`.
    #[must_use]
    pub fn with_time_source(mut self, time: TimeSource) -> Self {
        self.time = Some(time);
        self
    }
}

impl MarketplaceApi for Marketplace {
    /// `POST /api/client/register/{id}`: offers the device, returns a new rental.
    async fn register(&self, specs: &Specs) -> Result<Lease, MarketplaceError> {
        let call = "register";
        let (url, body) = self
            .call(call, Method::POST, "register", Some(specs))
            .await?;
        let bad = |reason: String| MarketplaceError::BadAnswer {
            call,
            url: url.clone(),
            reason,
        };
        let device = body
            .get("device")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no \"device\" object".into()))?;
        let text = |key: &str| {
            device
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("device.{key} is missing or not a string")))
        };
        let username = Username::parse(text("username")?).map_err(|e| bad(e.0))?;
        let password = Secret::password(text("password")?).map_err(|e| bad(e.0))?;
        let port = device
            .get("port")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad("device.port is missing or not an integer".into()))
            .and_then(|n| Port::new(n).map_err(|e| bad(e.0)))?;
        let expiration = parse_time(text("expiration")?).map_err(bad)?;
        Ok(Lease {
            username,
            password,
            port,
            expiration,
        })
    }

    /// `GET /api/client/checkin/{id}`: tells the marketplace the device is alive.
    async fn check_in(&self) -> Result<(), MarketplaceError> {
        let call = "check-in";
        let (url, body) = self.call(call, Method::GET, "checkin", None).await?;
        if body.get("success").and_then(Value::as_bool) == Some(true) {
            Ok(())
        } else {
            Err(MarketplaceError::BadAnswer {
                call,
                url,
                reason: "no \"success\": true".into(),
            })
        }
    }

    /// `GET /api/client/expiration/{id}`: when the current rental ends.
    async fn expiration(&self) -> Result<DateTime<Utc>, MarketplaceError> {
        let call = "expiration";
        let (url, body) = self.call(call, Method::GET, "expiration", None).await?;
        body.get("expiration")
            .and_then(Value::as_str)
            .ok_or_else(|| "no \"expiration\" string".to_owned())
            .and_then(parse_time)
            .map_err(|reason| MarketplaceError::BadAnswer { call, url, reason })
    }
}

impl Marketplace {
    async fn call(
        &self,
        call: &'static str,
        method: Method,
        route: &str,
        body: Option<&Specs>,
    ) -> Result<(String, Value), MarketplaceError> {
        let target = self
            .base
            .join(&format!("api/client/{route}/{}", self.device))
            .expect("a relative path of checked parts joins");
        // Errors carry the URL as text: a `Url` would make every Result large.
        let url = target.to_string();
        let mut req = self.http.request(method, target);
        if let Some(body) = body {
            req = req.json(body);
        }
        let unreachable = |source| MarketplaceError::Unreachable {
            call,
            url: url.clone(),
            source,
        };
        let mut resp = req.send().await.map_err(unreachable)?;
        if let Some(time) = &self.time {
            let date = resp.headers().get(reqwest::header::DATE);
            if let Some(date) = date.and_then(|d| parse_http_date(d.to_str().ok()?)) {
                time.observe_server_date(date);
            }
        }
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > BODY_LIMIT as u64) {
            return Err(MarketplaceError::TooLarge { call, url });
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if bytes.len() + chunk.len() > BODY_LIMIT {
                return Err(MarketplaceError::TooLarge { call, url });
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(MarketplaceError::Refused {
                call,
                url,
                status,
                body: printable(&bytes),
            });
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| MarketplaceError::BadAnswer {
            call,
            url: url.clone(),
            reason: format!("not JSON ({e}): {}", printable(&bytes)),
        })?;
        Ok((url, value))
    }
}

/// An ISO-8601 instant (the server sends JavaScript's `toISOString()`).
fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("expiration {:?} is not an ISO-8601 time: {e}", shorten(s)))
}

/// An HTTP `Date` (`Wed, 02 Dec 2026 00:47:02 GMT`: RFC 2822's form).
fn parse_http_date(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc2822(s).ok().map(|t| t.to_utc())
}

/// A server's error body made safe for one log line.
fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    shorten(clean.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse() {
        let t = parse_http_date("Wed, 02 Dec 2026 00:47:02 GMT").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-02T00:47:02+00:00");
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn times_parse_like_javascript_iso_strings() {
        let t = parse_time("2026-11-25T21:01:15.123Z").unwrap();
        assert_eq!(t.timestamp_millis() % 1000, 123);
        assert!(parse_time("2026-11-25T23:01:15+02:00").is_ok());
        assert!(
            parse_time("tomorrow")
                .unwrap_err()
                .contains("not an ISO-8601 time")
        );
    }

    #[test]
    fn error_bodies_are_made_printable() {
        assert_eq!(
            printable(b"Could not find\r\n that device."),
            "Could not find   that device."
        );
        assert_eq!(printable(&[b'x'; 100]).chars().count(), 41);
    }
}
