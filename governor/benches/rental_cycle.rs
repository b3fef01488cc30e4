//! Rental-cycle figures on the real Docker engine (run through `scripts/bench-governor`):
//! expiry -> container gone, against the floor of a bare `docker rm -f` of the same container;
//! expiry -> re-registered with a new container running; the governor's RSS after idle serving
//! with a heartbeat every second. Settings: P2PVPS_BENCH_CYCLES (5), P2PVPS_BENCH_IDLE_SECS (600).
#![allow(clippy::cast_precision_loss)] // byte counts shown in MiB

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use p2pvps_devserver::{Options, Running, spawn};

#[path = "../tests/common/mod.rs"]
mod common;
use common::{admin_device as admin, docker, random_device as device};

const BIN: &str = env!("CARGO_BIN_EXE_p2pvps-governor");
const LEASE: Duration = Duration::from_secs(15);

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn container_id(name: &str) -> Option<String> {
    let (ok, out, _) = docker(&["inspect", "--format", "{{.Id}} {{.State.Running}}", name]);
    let mut parts = out.split(' ');
    match (ok, parts.next(), parts.next()) {
        (true, Some(id), Some("true")) => Some(id.to_owned()),
        _ => None,
    }
}

fn phase(state: &Path) -> String {
    let out = Command::new(BIN)
        .args(["status", "--json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["phase"].as_str().unwrap_or("").to_owned()
}

struct Governor(Child);
impl Drop for Governor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn governor(dir: &Path, base: &str, id: &str, name: &str, heartbeat: u64) -> Governor {
    governor_with(dir, base, id, name, heartbeat, &[])
}

fn governor_with(
    dir: &Path,
    base: &str,
    id: &str,
    name: &str,
    heartbeat: u64,
    extra: &[&str],
) -> Governor {
    let config = dir.join("device-config.json");
    std::fs::write(
        &config,
        format!(r#"{{"deviceId": "{id}", "serverUrl": "{base}", "storageDevice": "none", "storageSizeMb": 64, "heartbeatSeconds": {heartbeat}, "led": "none"}}"#),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--container-name", name])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Governor(child)
}

async fn devserver(id: &str, lease: Duration) -> Running {
    spawn(
        "127.0.0.1:0".parse().unwrap(),
        Options {
            devices: vec![id.to_owned()],
            lease,
            ..Options::default()
        },
    )
    .await
    .unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(label: &str, v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    println!(
        "{label:<44} median {median:8.1} ms   min {:8.1}   max {:8.1}   (n={})",
        v[0],
        v[v.len() - 1],
        v.len()
    );
    median
}

/// The floor: create a renter container like the governor does and time `docker rm -f` on it.
fn bare_removal() -> f64 {
    let name = format!("p2pvps-bench-floor-{}", device());
    let (ok, _, _) = docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        &name,
        "p2pvps/renter:latest",
        "sleep",
        "infinity",
    ]);
    assert!(ok, "the renter image is needed: scripts/test builds it");
    let t = Instant::now();
    assert!(docker(&["rm", "-f", &name]).0);
    ms(t.elapsed())
}

async fn cycles(n: u64) {
    let id = device();
    let name = format!("p2pvps-bench-{id}");
    let server = devserver(&id, LEASE).await;
    let base = server.url();
    let tmp = tempfile::tempdir().unwrap();
    let _g = governor(tmp.path(), &base, &id, &name, 60);
    let (mut gone, mut ready, mut floor) = (vec![], vec![], vec![]);
    let mut current = loop {
        if let Some(c) = container_id(&name)
            && phase(&tmp.path().join("state")) == "serving"
        {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for cycle in 1..=n {
        let d = admin(&base, &id).await;
        let regs = d["registrations"].as_u64().unwrap();
        let exp: DateTime<Utc> = d["lease"]["expiration"].as_str().unwrap().parse().unwrap();
        // Poll every 10 ms from just before the expiration.
        let wait = (exp - Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(Duration::from_millis(200));
        tokio::time::sleep(wait).await;
        loop {
            if container_id(&name).as_deref() != Some(current.as_str()) {
                gone.push(ms((Utc::now() - exp).to_std().unwrap_or_default()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        loop {
            let fresh = container_id(&name).filter(|c| *c != current);
            if let Some(c) = fresh
                && admin(&base, &id).await["registrations"].as_u64() > Some(regs)
                && phase(&tmp.path().join("state")) == "serving"
            {
                ready.push(ms((Utc::now() - exp).to_std().unwrap_or_default()));
                current = c;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("cycle {cycle}/{n} done");
    }
    let _ = docker(&["rm", "-f", &name]);
    server.stop().await;
    // Measured apart from the cycles so that it never delays watching an expiration.
    for _ in 0..n {
        floor.push(bare_removal());
    }
    let g = summary("expiry -> renter container gone", &mut gone);
    let f = summary("baseline: bare `docker rm -f` of a renter", &mut floor);
    summary("expiry -> re-registered, new container up", &mut ready);
    println!(
        "{:<44} {:.2}x the bare removal (poll resolution 10 ms)",
        "expiry -> gone / baseline",
        g / f
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// The governor's RSS while serving with 1 s heartbeats, side by side: one without the owner's
/// page, one with it and a browser's worth of requests (the page's JSON and /metrics every second).
async fn idle_rss(secs: u64) {
    let (without, with) = tokio::join!(idle_rss_one(secs, false), idle_rss_one(secs, true));
    for (what, (start, end, checkins)) in [("without the page", without), ("with the page", with)] {
        println!(
            "{:<44} {:.1} MiB at start, {:.1} MiB after {secs} s ({checkins} heartbeats at 1 s); target <= 10 MiB",
            format!("governor RSS while serving, {what}"),
            start as f64 / 1024.0,
            end as f64 / 1024.0
        );
    }
}

/// RSS (KiB) at the start of serving and after `secs`, and the heartbeats meanwhile.
async fn idle_rss_one(secs: u64, page: bool) -> (u64, u64, u64) {
    let id = device();
    let name = format!("p2pvps-bench-idle-{id}");
    let server = devserver(&id, Duration::from_hours(24)).await;
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port_arg = port.to_string();
    let extra: &[&str] = if page {
        &["--status-port", &port_arg]
    } else {
        &[]
    };
    let g = governor_with(tmp.path(), &server.url(), &id, &name, 1, extra);
    while phase(&tmp.path().join("state")) != "serving" {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = rss_kib(g.0.id());
    let viewer = async {
        if !page {
            // Nobody looks: only the sleep below ends the wait.
            std::future::pending::<()>().await;
        }
        let client = reqwest::Client::new();
        loop {
            for path in ["/status.json", "/metrics"] {
                let _ = client
                    .get(format!("http://127.0.0.1:{port}{path}"))
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(secs)) => {}
        () = viewer => {}
    }
    let end = rss_kib(g.0.id());
    let checkins = admin(&server.url(), &id).await["checkins"]
        .as_u64()
        .unwrap();
    drop(g);
    let _ = docker(&["rm", "-f", &name]);
    server.stop().await;
    (start, end, checkins)
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `cargo bench` passes --bench; nothing else is accepted.
    let size = std::fs::metadata(BIN).unwrap().len();
    println!(
        "{:<44} {:.2} MiB ({BIN})",
        "governor binary size",
        size as f64 / 1_048_576.0
    );
    cycles(env_num("P2PVPS_BENCH_CYCLES", 5)).await;
    idle_rss(env_num("P2PVPS_BENCH_IDLE_SECS", 600)).await;
}
