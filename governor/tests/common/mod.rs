//! Helpers shared by the integration tests that use real components.
#![allow(dead_code)] // each test binary uses a different subset

pub mod paused;
pub mod tunnel;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fresh random device id (24 hex digits), so tests on the shared engine never collide.
pub fn random_device() -> String {
    let [a, b, c] = rand::random::<[u32; 3]>();
    format!("{a:08x}{b:08x}{c:08x}")
}

/// Run `docker ARGS`, returning (success, stdout, stderr).
pub fn docker(args: &[&str]) -> (bool, String, String) {
    run("docker", args)
}

/// Run `program ARGS`, returning (success, stdout, stderr).
pub fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
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

/// A Docker network of the test's own, as the governor makes it (a bridge named after it), removed
/// with its nftables table when dropped.
pub struct Network {
    pub name: String,
    pub bridge: String,
    pub gateway: std::net::IpAddr,
}

impl Network {
    pub fn create() -> Self {
        let name = format!("p2pvps-t-{}", &random_device()[..12]);
        let bridge = p2pvps_governor::runtime::bridge_name(&name);
        let option = format!("com.docker.network.bridge.name={bridge}");
        let (ok, _, err) = docker(&["network", "create", "-o", &option, &name]);
        assert!(ok, "docker network create: {err}");
        let (ok, gw, err) = docker(&[
            "network",
            "inspect",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
            &name,
        ]);
        assert!(ok, "{err}");
        Self {
            name,
            bridge,
            gateway: gw.parse().expect("gateway address"),
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // The test's containers may still be attached (locals drop in reverse order).
        let (_, attached, _) = docker(&[
            "network",
            "inspect",
            "--format",
            "{{range .Containers}}{{.Name}} {{end}}",
            &self.name,
        ]);
        for container in attached.split_whitespace() {
            let _ = docker(&["rm", "-f", container]);
        }
        let _ = docker(&["network", "rm", &self.name]);
        let _ = p2pvps_governor::sandbox::NftFirewall::remove(&self.bridge);
    }
}

/// A devserver on 127.0.0.1 that knows `device`, with leases of `lease` (its default: one day).
pub async fn devserver(device: &str, lease: Option<Duration>) -> p2pvps_devserver::Running {
    let mut options = p2pvps_devserver::Options {
        devices: vec![device.to_owned()],
        ..p2pvps_devserver::Options::default()
    };
    if let Some(lease) = lease {
        options.lease = lease;
    }
    p2pvps_devserver::spawn("127.0.0.1:0".parse().unwrap(), options)
        .await
        .expect("the devserver starts")
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

/// A governor process, killed when dropped.
pub struct Governor(pub Child);

impl Drop for Governor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `p2pvps-governor run` with this config and state dir; its renter container gets `name` on the
/// Docker network `network`. Logs go to the test's stderr.
pub fn start_governor(config: &Path, state: &Path, name: &str, network: &str) -> Governor {
    start_governor_with(config, state, name, network, &[])
}

/// [`start_governor`] with more `run` options.
pub fn start_governor_with(
    config: &Path,
    state: &Path,
    name: &str,
    network: &str,
    extra: &[&str],
) -> Governor {
    let child = Command::new(env!("CARGO_BIN_EXE_p2pvps-governor"))
        .args(["run", "--config"])
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args(["--container-name", name, "--network", network])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("governor starts");
    Governor(child)
}

/// `p2pvps-governor status --json`.
pub fn status(state: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_p2pvps-governor"))
        .args(["status", "--json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Poll `f` every 50 ms until it gives a value; fail the test after `limit`.
pub async fn wait_for<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
