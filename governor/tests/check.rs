//! `p2pvps-governor check` against the real components, present and absent: the devserver, the
//! Docker engine, the renter image, and Debian's sshd as the tunnel endpoint.

mod common;

use std::process::Command;

use p2pvps_testkit::{Endpoint, free_port};

struct Outcome {
    success: bool,
    text: String,
}

impl Outcome {
    fn line(&self, item: &str) -> &str {
        self.text
            .lines()
            .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(item)))
            .unwrap_or_else(|| panic!("no {item} line in:\n{}", self.text))
    }

    fn ok(&self, item: &str) -> bool {
        self.line(item).starts_with("OK")
    }
}

fn check(config: &str, docker_host: Option<&str>) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device-config.json");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p2pvps-governor"));
    cmd.args(["check", "--config"]).arg(&path);
    if let Some(h) = docker_host {
        cmd.env("DOCKER_HOST", h);
    }
    let out = cmd.output().unwrap();
    Outcome {
        success: out.status.success(),
        text: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

fn config(device: &str, server: &str, endpoint_port: u16, extra: &str) -> String {
    format!(
        r#"{{"deviceId": "{device}", "serverUrl": "{server}", "sshServer": "127.0.0.1",
            "sshServerPort": {endpoint_port}, "storageDevice": "none", "led": "none"{extra}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one machine, every check broken in turn
async fn all_ok_and_each_fail_with_its_fix() {
    let device = common::random_device();
    let server = common::devserver(&device, None).await;
    let endpoint = Endpoint::start();
    let pin = format!(r#", "sshHostKey": "{}""#, endpoint.fingerprint);

    let all = tokio::task::spawn_blocking({
        let c = config(&device, &server.url(), endpoint.port, &pin);
        move || check(&c, None)
    })
    .await
    .unwrap();
    assert!(all.success, "{}", all.text);
    for item in [
        "config", "clock", "docker", "userns", "image", "sandbox", "storage", "dm-crypt", "server",
        "tunnel",
    ] {
        assert!(all.ok(item), "{item}: {}", all.text);
    }
    assert!(all.line("tunnel").contains("pinned host key"));
    // This host's engine runs without userns-remap; the line says what that means.
    assert!(
        all.line("userns")
            .contains("off: the renter's root is this host's root")
    );
    assert!(!all.text.contains("fix:"));
    // It checked in, and registered nothing.
    let admin = common::admin_device(&server.url(), &device).await;
    assert_eq!(admin["registrations"], 0);
    assert_eq!(admin["checkins"], 1);

    let url = server.url();
    let port = endpoint.port;
    let fingerprint = endpoint.fingerprint.clone();
    let stranger = common::random_device();
    let closed = free_port();
    tokio::task::spawn_blocking(move || {
        let o = check(&config(&stranger, &url, port, ""), None);
        assert!(!o.success);
        assert!(
            o.line("server").contains("does not know device"),
            "{}",
            o.text
        );
        assert!(
            o.text
                .contains("fix: copy the device id from the marketplace")
        );

        let o = check(
            &config(&device, &format!("http://127.0.0.1:{closed}"), port, ""),
            None,
        );
        assert!(
            o.line("server").starts_with("FAIL") && o.line("server").contains("unreachable"),
            "{}",
            o.text
        );

        let o = check(
            &config(&device, &url, port, ""),
            Some("unix:///nonexistent/docker.sock"),
        );
        assert!(o.line("docker").starts_with("FAIL"), "{}", o.text);
        assert!(o.text.contains("fix: start the engine"));

        let o = check(
            &config(
                &device,
                &url,
                port,
                r#", "renterImage": "p2pvps/absent:none""#,
            ),
            None,
        );
        assert!(
            o.line("image").starts_with("FAIL") && o.line("image").contains("p2pvps/absent:none"),
            "{}",
            o.text
        );

        let o = check(&config(&device, &url, closed, ""), None);
        assert!(o.line("tunnel").starts_with("FAIL"), "{}", o.text);

        let wrong = format!(r#", "sshHostKey": "SHA256:{}""#, "A".repeat(43));
        let o = check(&config(&device, &url, port, &wrong), None);
        let line = o.line("tunnel");
        assert!(
            line.starts_with("FAIL") && line.contains(&fingerprint),
            "{}",
            o.text
        );

        // This machine's kernel has no dm-crypt: the real component is absent.
        let o = check(
            &config(&device, &url, port, "")
                .replace(r#""storageDevice": "none""#, r#""storageDevice": "auto""#),
            None,
        );
        assert!(o.line("dm-crypt").starts_with("FAIL"), "{}", o.text);
        assert!(o.text.contains("\"encryptStorage\": false"));

        let o = check("{\"deviceId\": 1}", None);
        assert!(!o.success);
        assert!(o.line("config").contains("deviceId"), "{}", o.text);
        assert_eq!(
            o.text
                .lines()
                .filter(|l| !l.starts_with("      fix"))
                .count(),
            1
        );
    })
    .await
    .unwrap();
    server.stop().await;
}
