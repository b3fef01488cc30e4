//! A renter reaches the container through the reverse tunnel, end to end: the governor binary, the
//! devserver, the real Docker engine with the renter image (connector, sshd), and Debian's OpenSSH
//! server as the tunnel endpoint. The container sits on a Docker network the test makes; the
//! endpoint listens on that network's gateway and on 127.0.0.1, where the renter's `ssh` goes.

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{
    Cleanup, Governor, admin_device, docker, random_device, start_governor, status, wait_for,
};
use p2pvps_devserver::{Options, Running, spawn};
use p2pvps_testkit::{Endpoint, EndpointOptions, TUNNEL_USER, tunnel_password};

/// A Docker network of the test's own, removed when dropped.
struct Network {
    name: String,
    gateway: IpAddr,
}

impl Network {
    fn create() -> Self {
        let name = format!("p2pvps-t-{}", &random_device()[..12]);
        let (ok, _, err) = docker(&["network", "create", &name]);
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
            gateway: gw.parse().expect("gateway address"),
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// One device: a devserver, an endpoint, a network and a governor, torn down in the right order.
struct Rig {
    governor: Option<Governor>,
    _cleanup: Cleanup,
    endpoint: Endpoint,
    _network: Network,
    server: Option<Running>,
    device: String,
    name: String,
    state: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Rig {
    async fn start(host_key: Option<&str>) -> Self {
        let network = Network::create();
        let endpoint = Endpoint::start_with(EndpointOptions {
            listen: vec![network.gateway],
            // A dead session frees its forwarded port in seconds, as a restart test needs.
            client_alive: Some((2, 2)),
        });
        let device = random_device();
        let name = format!("p2pvps-tun-{}", &device[..12]);
        // Ports of its own per test, so parallel tests never share one.
        let first_port = 20_000 + u16::from_str_radix(&device[..3], 16).unwrap() * 8;
        let server = spawn(
            "127.0.0.1:0".parse().unwrap(),
            Options {
                devices: vec![device.clone()],
                lease: Duration::from_hours(1),
                first_port,
                ..Options::default()
            },
        )
        .await
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("device-config.json");
        let pin = host_key.map_or(String::new(), |k| format!(r#", "sshHostKey": "{k}""#));
        std::fs::write(
            &config,
            format!(
                r#"{{"deviceId": "{device}", "serverUrl": "{}", "storageDevice": "none", "heartbeatSeconds": 2,
                    "led": "none", "sshServer": "{}", "sshServerPort": {}, "sshUser": "{TUNNEL_USER}",
                    "sshPassword": "{}"{pin}}}"#,
                server.url(),
                network.gateway,
                endpoint.port,
                tunnel_password(),
            ),
        )
        .unwrap();
        let state = tmp.path().join("state");
        let governor = start_governor(&config, &state, &name, &network.name);
        Self {
            governor: Some(governor),
            _cleanup: Cleanup(vec![name.clone()]),
            endpoint,
            _network: network,
            server: Some(server),
            device,
            name,
            state,
            _tmp: tmp,
        }
    }

    fn base(&self) -> String {
        self.server.as_ref().unwrap().url()
    }

    /// The current lease from the marketplace's side, once the device serves it with the tunnel up.
    async fn serving(&self, registrations: u64, limit: Duration) -> (String, String, u16) {
        wait_for("the rental served through the tunnel", limit, async || {
            let d = admin_device(&self.base(), &self.device).await;
            let st = status(&self.state);
            let ready = d["registrations"] == registrations
                && st["phase"] == "serving"
                && st["tunnel"]["state"] == "up";
            ready.then(|| {
                let l = &d["lease"];
                (
                    l["username"].as_str().unwrap().to_owned(),
                    l["password"].as_str().unwrap().to_owned(),
                    u16::try_from(l["port"].as_u64().unwrap()).unwrap(),
                )
            })
        })
        .await
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.governor.take();
        if let Some(server) = self.server.take() {
            drop(server);
        }
    }
}

/// `ssh` as a renter would type it, with the password given by sshpass.
fn ssh(port: u16, user: &str, password: &str, command: &str) -> Output {
    Command::new("sshpass")
        .args(["-p", password, "ssh", "-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .output()
        .expect("run ssh")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

async fn login_works(port: u16, user: &str, password: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut last = None;
    let deadline = Instant::now() + limit;
    loop {
        let o = ssh(port, user, password, "whoami");
        if o.status.success() && stdout(&o) == user {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no login through the tunnel within {limit:?}: {last:?}"
        );
        last = Some(o);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    started.elapsed()
}

/// The command lines of Docker's port publishers (docker-proxy), which carry the container's IP.
fn port_publishers() -> String {
    let out = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("docker-proxy"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renter_logs_in_with_sudo_and_a_re_rent_changes_the_login() {
    let rig = Rig::start(None).await;
    let (user, password, port) = rig.serving(1, Duration::from_secs(90)).await;

    login_works(port, &user, &password, Duration::from_secs(30)).await;
    // Nothing of the container is published on the host's addresses: no port bindings, no
    // docker-proxy for its address; the renter came in through the endpoint's forward.
    let (_, ip, _) = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &rig.name,
    ]);
    assert!(!ip.is_empty());
    let (_, ports, _) = docker(&[
        "inspect",
        "--format",
        "{{json .NetworkSettings.Ports}}",
        &rig.name,
    ]);
    assert!(ports == "{}" || ports == "null", "published: {ports}");
    let publishers = port_publishers();
    assert!(
        !publishers.contains(&format!("-container-ip {ip} ")),
        "{publishers}"
    );
    assert!(
        rig.endpoint
            .log()
            .contains(&format!("Accepted password for {TUNNEL_USER}"))
    );

    // sudo needs the password; root cannot log in; the storage is the renter's.
    let o = ssh(port, &user, &password, "sudo -n true");
    assert!(!o.status.success(), "sudo without a password worked");
    let o = ssh(
        port,
        &user,
        &password,
        &format!("echo '{password}' | sudo -S -p '' id -u"),
    );
    assert_eq!(stdout(&o), "0", "sudo with the password: {o:?}");
    let o = ssh(port, "root", &password, "true");
    assert!(!o.status.success(), "root logged in");
    let o = ssh(
        port,
        &user,
        &password,
        "echo kept > /media/storage/f && cat /media/storage/f",
    );
    assert_eq!(stdout(&o), "kept");

    // The marketplace ends the rental: the next renter's login works, the old one does not.
    let r = common::http()
        .post(format!("{}/admin/expire/{}", rig.base(), rig.device))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (next_user, next_password, next_port) = rig.serving(2, Duration::from_secs(90)).await;
    assert_ne!(next_user, user);
    let took = login_works(
        next_port,
        &next_user,
        &next_password,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("new renter logged in {took:?} after the tunnel reported up");
    let o = ssh(next_port, &user, &password, "true");
    assert!(
        !o.status.success(),
        "the previous renter's login still works"
    );
    let o = ssh(
        next_port,
        &next_user,
        &next_password,
        "ls -A /media/storage",
    );
    assert_eq!(stdout(&o), "", "the new renter sees the old files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_heals_after_an_endpoint_restart_and_a_stale_port() {
    let mut rig = Rig::start(None).await;
    let (user, password, port) = rig.serving(1, Duration::from_secs(90)).await;
    login_works(port, &user, &password, Duration::from_secs(30)).await;

    // The endpoint restarts (all its sessions die with it).
    rig.endpoint.restart();
    let took = login_works(port, &user, &password, Duration::from_secs(90)).await;
    eprintln!("tunnel back {took:?} after the endpoint restarted");

    // The endpoint goes down and, while it is down, something else holds the forwarded port: the
    // forward is refused until the stale listener goes away.
    rig.endpoint.kill();
    // The killed sessions' sockets close a moment after the kill.
    let stale = wait_for(
        "the forward's port to be free",
        Duration::from_secs(10),
        async || std::net::TcpListener::bind(("127.0.0.1", port)).ok(),
    )
    .await;
    rig.endpoint.restart();
    wait_for(
        "the refused forward to be reported",
        Duration::from_mins(1),
        async || {
            let t = status(&rig.state)["tunnel"].clone();
            (t["state"] == "down" && t["error"].as_str().is_some_and(|e| e.contains("refused")))
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(stale);
    let took = login_works(port, &user, &password, Duration::from_secs(90)).await;
    eprintln!("tunnel back {took:?} after the stale listener went away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pinned_host_key_never_connects() {
    let wrong = format!("SHA256:{}", "A".repeat(43));
    let rig = Rig::start(Some(&wrong)).await;
    let t = wait_for(
        "the tunnel to report the key",
        Duration::from_secs(90),
        async || {
            let t = status(&rig.state)["tunnel"].clone();
            (t["state"] == "down").then_some(t)
        },
    )
    .await;
    let error = t["error"].as_str().unwrap();
    assert!(
        error.contains(&wrong) && error.contains(&rig.endpoint.fingerprint),
        "{error}"
    );
    let (ok, logs) = docker_logs(&rig.name);
    assert!(ok);
    assert!(
        logs.contains(&rig.endpoint.fingerprint),
        "no clear line in the container log"
    );
    assert!(
        !logs.contains(&tunnel_password()),
        "the tunnel password reached the log"
    );
    let lease = admin_device(&rig.base(), &rig.device).await["lease"].clone();
    let port = u16::try_from(lease["port"].as_u64().unwrap()).unwrap();
    let o = ssh(
        port,
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap(),
        "true",
    );
    assert!(
        !o.status.success(),
        "a login got through an unpinned endpoint"
    );
    assert!(
        !rig.endpoint.log().contains("Accepted password"),
        "the device logged in anyway"
    );
}

fn docker_logs(name: &str) -> (bool, String) {
    let out = Command::new("docker")
        .args(["logs", name])
        .output()
        .unwrap();
    // The container logs to both streams (sshd's -e goes to stderr).
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}
