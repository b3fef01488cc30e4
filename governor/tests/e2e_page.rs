//! The owner's page against the real governor, Docker engine, devserver and tunnel endpoint: what it
//! shows in each phase, `/metrics` read by Prometheus' own parser (promtool), no secret anywhere on
//! it, read-only, and out of the renter's reach (from root in the real renter container).

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::tunnel::Rig;
use common::{docker, http, wait_for};
use p2pvps_testkit::tunnel_password;
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(base: &str, path: &str) -> (u16, String) {
    let r = http().get(format!("{base}{path}")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn page(base: &str) -> Value {
    let (status, body) = get(base, "/status.json").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `promtool check metrics` on `text`: Prometheus' parser and linter.
fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup-host installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refused /metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_page_follows_the_rental_shows_no_secret_and_is_out_of_the_renters_reach() {
    let port = free_port();
    let rig = Rig::start_with(
        None,
        Duration::from_hours(1),
        &["--status-port", &port.to_string()],
    )
    .await;
    let (user, password, _) = rig.serving(1, Duration::from_mins(1)).await;
    let base = format!("http://127.0.0.1:{port}");

    // The page and what it loads, all from the device.
    let (status, html) = get(&base, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains(r#"<script src="/app.js""#) && html.contains("/style.css"));
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "{html}"
    );
    let (status, js) = get(&base, "/app.js").await;
    assert_eq!(status, 200);
    assert!(js.contains("/status.json"));

    // Serving: the phase in words, the rental's end, the tunnel; the log without the login name.
    let v = page(&base).await;
    assert_eq!(v["phase"], "serving", "{v}");
    assert!(v["meaning"].as_str().unwrap().contains("Rented"), "{v}");
    assert_eq!(v["name"], format!("p2pvps-{}.local", &rig.device[..6]));
    // `status` (and the console, which shows it) says where the page is.
    assert_eq!(
        common::status(&rig.state)["page"],
        format!("http://p2pvps-{}.local:{port}/", &rig.device[..6])
    );
    let left = v["rental"]["secondsLeft"].as_i64().unwrap();
    assert!((3000..=3600).contains(&left), "{v}");
    assert_eq!(v["tunnel"]["state"], "up", "{v}");
    // The rental's volume (a 64 MB file, loop-mounted): its space is shown.
    let free = v["storage"]["freeBytes"]
        .as_u64()
        .expect("free space shown");
    assert!((1..=64_000_000).contains(&free), "{v}");
    assert!(v["storage"]["usedBytes"].is_u64(), "{v}");
    let log = v["log"].as_array().unwrap();
    assert!(
        log.iter()
            .any(|l| l.as_str().unwrap().contains("registered")),
        "{v}"
    );

    // /metrics parses, and says the same.
    let (status, metrics) = get(&base, "/metrics").await;
    assert_eq!(status, 200);
    promtool(&metrics);
    let device = format!("device=\"{}\"", rig.device);
    assert!(
        metrics.contains(&format!("p2pvps_phase{{{device},phase=\"serving\"}} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("p2pvps_tunnel_up{{{device}}} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("p2pvps_governor_resident_bytes{"),
        "{metrics}"
    );

    // `check`'s lines come (run in the background on the first view).
    let checks = wait_for(
        "check's lines on the page",
        Duration::from_mins(1),
        async || {
            let v = page(&base).await;
            let checks = v["checks"].as_array().unwrap().clone();
            (!checks.is_empty()).then_some(checks)
        },
    )
    .await;
    assert!(
        checks
            .iter()
            .all(|c| c["item"].is_string() && c["detail"].is_string()),
        "{checks:?}"
    );

    no_secret_on_the_page(&rig, &base, &[&user, &password, &html, &js]).await;
    read_only_and_out_of_the_renters_reach(&rig, &base, port).await;

    follows_the_next_rental(&rig, &base, &device).await;

    // Stopped, the governor no longer has a page: `status` stops naming it.
    let mut rig = rig;
    assert!(rig.stop().success());
    assert!(
        common::status(&rig.state)["page"].is_null(),
        "the page's address outlived the governor"
    );
}

/// No secret anywhere: the renter's name and password, the stored hash, the tunnel's password.
/// `known[..2]` are the renter's name and password, the rest pages already fetched.
async fn no_secret_on_the_page(rig: &Rig, base: &str, known: &[&str]) {
    let (user, password) = (known[0], known[1]);
    let state = std::fs::read_to_string(rig.state.join("state.json")).unwrap();
    let hash = serde_json::from_str::<Value>(&state).unwrap()["lease"]["passwordHash"]
        .as_str()
        .expect("the state keeps the hash")
        .to_owned();
    let (_, json) = get(base, "/status.json").await;
    let (_, metrics) = get(base, "/metrics").await;
    let tunnel = tunnel_password();
    for body in known[2..]
        .iter()
        .copied()
        .chain([json.as_str(), metrics.as_str()])
    {
        for secret in [user, password, hash.as_str(), tunnel.as_str()] {
            assert!(!body.contains(secret), "a secret on the page");
        }
        assert!(!body.contains("$6$") && !body.contains("PRIVATE KEY"));
    }
}

/// Nothing but GET and HEAD; and the renter (root in their container) cannot reach the page at the
/// address the host has on their network, where the host itself can (so the page does listen there).
async fn read_only_and_out_of_the_renters_reach(rig: &Rig, base: &str, port: u16) {
    let r = http()
        .post(format!("{base}/status.json"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let gateway = rig.network.gateway;
    let (status, _) = get(&format!("http://{gateway}:{port}"), "/").await;
    assert_eq!(status, 200, "the page does not listen on {gateway}");
    let (reached, out, err) = docker(&[
        "exec",
        &rig.name,
        "timeout",
        "5",
        "bash",
        "-c",
        &format!("exec 3<>/dev/tcp/{gateway}/{port} && echo REACHED"),
    ]);
    assert!(
        !reached && !out.contains("REACHED"),
        "the renter's container reached the owner's page: {out} {err}"
    );
}

/// The lease ends: the page follows the wipe and the next rental, and counts them.
async fn follows_the_next_rental(rig: &Rig, base: &str, device: &str) {
    rig.expire().await;
    let seen = wait_for(
        "the page to leave serving",
        Duration::from_mins(1),
        async || {
            let v = page(base).await;
            (v["phase"] != "serving").then(|| v["phase"].as_str().unwrap().to_owned())
        },
    )
    .await;
    assert!(
        [
            "expired",
            "wiping",
            "preparing-storage",
            "registering",
            "provisioning"
        ]
        .contains(&seen.as_str()),
        "{seen}"
    );
    rig.serving(2, Duration::from_mins(1)).await;
    let v = wait_for(
        "the next rental on the page",
        Duration::from_secs(30),
        async || {
            let v = page(base).await;
            (v["phase"] == "serving" && v["rentalsCompleted"] == 1).then_some(v)
        },
    )
    .await;
    assert!(v["checkIns"]["ok"].as_u64().unwrap() >= 1, "{v}");
    let ago = v["checkIns"]["secondsAgo"].as_i64().unwrap();
    assert!((0..=10).contains(&ago), "{v}");
    let (_, metrics) = get(base, "/metrics").await;
    promtool(&metrics);
    assert!(
        metrics.contains(&format!("p2pvps_wipes_total{{{device}}} 1")),
        "{metrics}"
    );
}
