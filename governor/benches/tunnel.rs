//! Tunnel figures (run through `scripts/bench-tunnel`): a copy and a login through the connector's
//! tunnel (russh, kept by the governor on the host) against the same through a reverse forward made
//! by OpenSSH's `ssh -R` from the host to the same container and endpoint, side by side; and, with
//! everything made before the device is listed, the times from a lease's end to the next
//! registration and to the next renter's first login through the tunnel. Settings: P2PVPS_BENCH_MIB (64), _ROUNDS (5).

#![allow(clippy::cast_precision_loss)] // figures for display

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
use common::tunnel::{Rig, login_works, ssh, ssh_command};
use common::{docker, wait_for};
use p2pvps_testkit::{TUNNEL_USER, free_port};

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `ssh … 'cat > /dev/null' < file`: seconds for the whole copy.
fn copy(port: u16, user: &str, password: &str, file: &std::path::Path) -> f64 {
    let started = Instant::now();
    let status = ssh_command(port, user, password, "cat > /dev/null")
        .stdin(std::fs::File::open(file).unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "copy through port {port} failed");
    started.elapsed().as_secs_f64()
}

fn login_secs(port: u16, user: &str, password: &str) -> f64 {
    let started = Instant::now();
    assert!(ssh(port, user, password, "true").status.success());
    started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// OpenSSH's reverse forward of `port` to the container's sshd, run on the host as the
/// governor's keeper is, with a key the endpoint accepts: the baseline path. Killed when dropped.
struct OpensshForward {
    child: std::process::Child,
    /// Holds the key for as long as ssh runs.
    _keys: tempfile::TempDir,
}

impl Drop for OpensshForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssh_forward(rig: &Rig, port: u16) -> OpensshForward {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bench_key");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::copy(
        key.with_extension("pub"),
        rig.endpoint.path("authorized_keys"),
    )
    .unwrap();
    let (_, ip, _) = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &rig.name,
    ]);
    let forward = format!("0.0.0.0:{port}:{ip}:22");
    let child = Command::new("ssh")
        .arg("-i")
        .arg(&key)
        .args([
            "-N",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ExitOnForwardFailure=yes", "-R", &forward])
        .args(["-p", &rig.endpoint.port.to_string()])
        .arg(format!("{TUNNEL_USER}@{}", rig.network.gateway))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    OpensshForward { child, _keys: dir }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mib = env_num("P2PVPS_BENCH_MIB", 64);
    let rounds = env_num("P2PVPS_BENCH_ROUNDS", 5);
    let rig = Rig::start(None).await;
    let (user, password, port) = rig.serving(1, Duration::from_mins(2)).await;
    login_works(port, &user, &password, Duration::from_mins(1)).await;

    let baseline_port = free_port();
    let _baseline = openssh_forward(&rig, baseline_port);
    login_works(baseline_port, &user, &password, Duration::from_secs(30)).await;

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("payload");
    // Incompressible enough that no layer's compression flatters either path.
    let data: Vec<u8> = (0..mib * 1024 * 1024)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 13) & 0xff).to_le_bytes()[0])
        .collect();
    std::fs::write(&file, data).unwrap();

    let (mut ours, mut theirs, mut ours_login, mut theirs_login) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        // Alternate the two paths so that machine noise hits both alike.
        ours.push(copy(port, &user, &password, &file));
        theirs.push(copy(baseline_port, &user, &password, &file));
        ours_login.push(login_secs(port, &user, &password));
        theirs_login.push(login_secs(baseline_port, &user, &password));
    }
    let (copy_ours, copy_base) = (median(ours), median(theirs));
    let size = mib as f64;
    println!(
        "{:<46} {:7.1} MiB/s  (copy of {mib} MiB, median of {rounds})",
        "throughput, connector tunnel (russh)",
        size / copy_ours
    );
    println!(
        "{:<46} {:7.1} MiB/s",
        "throughput, OpenSSH ssh -R (baseline)",
        size / copy_base
    );
    println!(
        "{:<46} {:7.2}x   (goal >= 0.8)",
        "throughput ratio connector / OpenSSH",
        copy_base / copy_ours
    );
    let (login_ours, login_base) = (median(ours_login), median(theirs_login));
    println!(
        "{:<46} {:7.1} ms  (ssh login + command, median of {rounds})",
        "login round trip, connector tunnel",
        login_ours * 1000.0
    );
    println!(
        "{:<46} {:7.1} ms",
        "login round trip, OpenSSH ssh -R",
        login_base * 1000.0
    );
    println!(
        "{:<46} {:7.2}x   (lower is better)",
        "latency ratio connector / OpenSSH",
        login_ours / login_base
    );

    ready_before_listed(&rig, rounds).await;
}

/// Ready before listed: from a lease's end to the next registration, and from that
/// registration (as the marketplace sees it) to the renter's first login through the tunnel.
async fn ready_before_listed(rig: &Rig, rounds: u64) {
    let (mut relisted, mut after_registration, mut after_expiry) = (vec![], vec![], vec![]);
    for n in 2..2 + rounds {
        let ended = Instant::now();
        rig.expire().await;
        let (user, password, port) = wait_for(
            "the next rental's lease",
            Duration::from_mins(1),
            async || {
                let d = common::admin_device(&rig.base(), &rig.device).await;
                let l = &d["lease"];
                (d["registrations"] == n).then(|| {
                    (
                        l["username"].as_str().unwrap().to_owned(),
                        l["password"].as_str().unwrap().to_owned(),
                        u16::try_from(l["port"].as_u64().unwrap()).unwrap(),
                    )
                })
            },
        )
        .await;
        let registered = Instant::now();
        loop {
            let o = ssh(port, &user, &password, "true");
            if o.status.success() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        relisted.push(ms(registered - ended));
        after_registration.push(ms(registered.elapsed()));
        after_expiry.push(ms(ended.elapsed()));
    }
    println!(
        "{:<46} {:7.0} ms  (median of {rounds}; poll 50 ms)",
        "lease end -> registered again",
        median(relisted)
    );
    println!(
        "{:<46} {:7.0} ms  (goal <= 2000)",
        "registered -> renter login works",
        median(after_registration)
    );
    println!(
        "{:<46} {:7.0} ms  (goal <= 5000)",
        "lease end -> next renter's login works",
        median(after_expiry)
    );
}
