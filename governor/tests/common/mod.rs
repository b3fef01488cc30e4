//! Helpers shared by the integration tests that use real components.
#![allow(dead_code)] // each test binary uses a different subset

use std::process::Command;

/// A fresh random device id (24 hex digits), so tests on the shared engine never collide.
pub fn random_device() -> String {
    let [a, b, c] = rand::random::<[u32; 3]>();
    format!("{a:08x}{b:08x}{c:08x}")
}

/// Run `docker ARGS`, returning (success, stdout, stderr).
pub fn docker(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// Removes the named containers when dropped, so a failing test leaves nothing behind.
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("docker").args(["rm", "-f", name]).output();
        }
    }
}

/// An HTTP client for the devserver's admin routes.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The admin view of one device on the devserver.
pub async fn admin_device(base: &str, id: &str) -> serde_json::Value {
    let all: serde_json::Value = http()
        .get(format!("{base}/admin/devices"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .cloned()
        .expect("device listed")
}
