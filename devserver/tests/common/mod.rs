//! Helpers shared by the integration tests: a server on 127.0.0.1:0 and a plain-HTTP client.
#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use p2pvps_devserver::{Options, Running};
use serde_json::{Value, json};

pub const DEVICE: &str = "5a2608cfd7df9800266a339d";
pub const OTHER: &str = "5a2608cfd7df9800266a33a0";
pub const UNKNOWN: &str = "0123456789abcdef01234567";

pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A server knowing `devices`, with default options otherwise.
pub async fn start(devices: &[&str]) -> Running {
    start_with(Options {
        devices: devices.iter().map(ToString::to_string).collect(),
        ..Options::default()
    })
    .await
}

pub async fn start_with(options: Options) -> Running {
    p2pvps_devserver::spawn(any_port(), options)
        .await
        .expect("devserver starts")
}

/// A plain-HTTP client. reqwest is built with `rustls-no-provider`: a client cannot be built until
/// a rustls crypto provider is installed, even for plain HTTP.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client builds")
}

pub fn specs() -> Value {
    json!({
        "memory": "3.7 GB",
        "diskSpace": "58 GB",
        "processor": "Cortex-A72",
        "internetSpeed": "100 Mbps",
    })
}

pub async fn register(client: &reqwest::Client, server: &Running, id: &str) -> reqwest::Response {
    client
        .post(format!("{}/api/client/register/{id}", server.url()))
        .json(&specs())
        .send()
        .await
        .expect("register request")
}

/// Registers and returns the `device` object of a 200 answer.
pub async fn register_ok(client: &reqwest::Client, server: &Running, id: &str) -> Value {
    let response = register(client, server, id).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("register answers JSON");
    body["device"].clone()
}

pub async fn get(client: &reqwest::Client, server: &Running, path: &str) -> reqwest::Response {
    client
        .get(format!("{}{path}", server.url()))
        .send()
        .await
        .expect("GET request")
}

/// Status and body text of a response.
pub async fn status_text(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// The `GET /admin/devices` entry of `id`.
pub async fn admin_device(client: &reqwest::Client, server: &Running, id: &str) -> Value {
    let list: Value = get(client, server, "/admin/devices")
        .await
        .json()
        .await
        .expect("admin list is JSON");
    list.as_array()
        .expect("admin list is an array")
        .iter()
        .find(|d| d["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("device {id} in the admin list: {list}"))
}

pub async fn set_fault(client: &reqwest::Client, server: &Running, mode: &str) {
    let response = client
        .put(format!("{}/admin/fault", server.url()))
        .json(&json!({ "mode": mode }))
        .send()
        .await
        .expect("fault request");
    assert_eq!(response.status(), 200);
}

/// Parses a timestamp, checking it is in `toISOString` form (UTC, milliseconds, `Z`).
pub fn parse_js_iso(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is a string"));
    assert_eq!(text.len(), 24, "{text} has toISOString's length");
    assert!(text.ends_with('Z'), "{text} ends with Z");
    assert_eq!(&text[19..20], ".", "{text} has milliseconds");
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text} parses: {e}"))
        .with_timezone(&Utc)
}

pub fn is_alnum10(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.len() == 10 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}
