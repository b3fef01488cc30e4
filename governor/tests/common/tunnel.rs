//! A device with a tunnel, for the tunnel tests and benchmark: a Docker network of the test's own,
//! Debian's sshd as the endpoint on its gateway and 127.0.0.1, the devserver, and the governor
//! binary whose renter container joins that network.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use p2pvps_devserver::{Options, Running, spawn};
use p2pvps_testkit::{Endpoint, EndpointOptions, TUNNEL_USER, tunnel_password};

use super::{
    Cleanup, Governor, Network, admin_device, random_device, start_governor_with, status, wait_for,
};

/// One device: a devserver, an endpoint, a network and a governor, torn down in the right order.
pub struct Rig {
    governor: Option<Governor>,
    _cleanup: Cleanup,
    pub endpoint: Endpoint,
    pub network: Network,
    server: Option<Running>,
    pub device: String,
    /// The renter container's name.
    pub name: String,
    pub state: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Rig {
    pub async fn start(host_key: Option<&str>) -> Self {
        Self::start_with(host_key, Duration::from_hours(1), &[]).await
    }

    /// With leases of `lease` and more `run` options for the governor.
    pub async fn start_with(host_key: Option<&str>, lease: Duration, extra: &[&str]) -> Self {
        let login = format!(r#""sshPassword": "{}""#, tunnel_password());
        Self::start_with_login(host_key, lease, extra, &login).await
    }

    /// [`Rig::start_with`], the tunnel's login given as config keys (`login`).
    pub async fn start_with_login(
        host_key: Option<&str>,
        lease: Duration,
        extra: &[&str],
        login: &str,
    ) -> Self {
        let network = Network::create();
        let endpoint = Endpoint::start_with(EndpointOptions {
            listen: vec![network.gateway],
            // A dead session frees its forwarded port in seconds, as a restart test needs.
            client_alive: Some((2, 2)),
            ..EndpointOptions::default()
        });
        let device = random_device();
        let name = format!("p2pvps-tun-{}", &device[..12]);
        // Ports of its own per test, so parallel tests never share one.
        let first_port = 20_000 + u16::from_str_radix(&device[..3], 16).unwrap() * 8;
        let server = spawn(
            "127.0.0.1:0".parse().unwrap(),
            Options {
                devices: vec![device.clone()],
                lease,
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
                r#"{{"deviceId": "{device}", "serverUrl": "{}", "storageDevice": "none", "storageSizeMb": 64, "heartbeatSeconds": 2,
                    "led": "none", "sshServer": "{}", "sshServerPort": {}, "sshUser": "{TUNNEL_USER}",
                    {login}{pin}}}"#,
                server.url(),
                network.gateway,
                endpoint.port,
            ),
        )
        .unwrap();
        let state = tmp.path().join("state");
        let governor = start_governor_with(&config, &state, &name, &network.name, extra);
        Self {
            governor: Some(governor),
            _cleanup: Cleanup(vec![name.clone()]),
            endpoint,
            network,
            server: Some(server),
            device,
            name,
            state,
            _tmp: tmp,
        }
    }

    /// The governor's process id.
    pub fn pid(&self) -> u32 {
        self.governor.as_ref().unwrap().0.id()
    }

    /// Stop the governor as systemd does (SIGTERM) and wait for it; its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut governor = self.governor.take().expect("the governor runs");
        let pid = governor.0.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        governor.0.wait().unwrap()
    }

    /// The marketplace ends the current rental now.
    pub async fn expire(&self) {
        let r = super::http()
            .post(format!("{}/admin/expire/{}", self.base(), self.device))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "admin expire: {}", r.status());
    }

    pub fn base(&self) -> String {
        self.server.as_ref().unwrap().url()
    }

    /// The current lease from the marketplace's side, once the device serves it with the tunnel up.
    pub async fn serving(&self, registrations: u64, limit: Duration) -> (String, String, u16) {
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
pub fn ssh(port: u16, user: &str, password: &str, command: &str) -> Output {
    ssh_command(port, user, password, command)
        .output()
        .expect("run ssh")
}

/// The renter's `ssh -p PORT USER@127.0.0.1 COMMAND`, to run with other stdio.
pub fn ssh_command(port: u16, user: &str, password: &str, command: &str) -> Command {
    let mut ssh = Command::new("sshpass");
    ssh.args(["-p", password, "ssh", "-p", &port.to_string()])
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
        .arg(command);
    ssh
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

pub async fn login_works(port: u16, user: &str, password: &str, limit: Duration) -> Duration {
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
