//! `scripts/tunnel-endpoint start/stop` (what scripts/test and the demo use): the endpoint it
//! starts serves a pinned tunnel, and after `stop` and `start` again the tunnel comes back by
//! itself.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Keeper, echo_server, ensure_tunnel_user, free_port, parse, repo_root, wait_usable};
use serde_json::json;

fn script(args: &[&str], dir: &Path) -> HashMap<String, String> {
    let out = Command::new(repo_root().join("scripts/tunnel-endpoint"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run scripts/tunnel-endpoint");
    assert!(
        out.status.success(),
        "scripts/tunnel-endpoint {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_endpoint_serves_a_pinned_tunnel_across_a_restart() {
    ensure_tunnel_user();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let started = script(&["start", "--port", &port], dir.path());
    assert_eq!(started["port"], port);
    let fingerprint = started["fingerprint"].clone();
    assert_eq!(
        fingerprint,
        common::fingerprint(&dir.path().join("host_key.pub"))
    );

    // The script runs the shipped config, which allows the marketplace's ports only (6000-6200);
    // taken from the top, while the range's own test takes from the bottom.
    let remote = (6000..=6200)
        .rev()
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 6000-6200");
    let settings = json!({
        "server": "127.0.0.1",
        "serverPort": port.parse::<u16>().unwrap(),
        "user": common::TUNNEL_USER,
        "password": common::tunnel_password(),
        "hostKey": fingerprint,
        "remotePort": remote,
        "bindAddress": "127.0.0.1",
        "localAddr": echo_server().await.to_string(),
        "keepaliveSeconds": 1,
        "keepaliveMax": 2,
    });
    let mut keeper = Keeper::start(parse(&settings));
    keeper.wait_up_after(0, Duration::from_secs(15)).await;
    wait_usable(remote, Duration::from_secs(10)).await;

    // `stop` takes the sessions down with the listener; the same dir keeps the same host key.
    let mark = keeper.history().len();
    script(&["stop"], dir.path());
    keeper
        .wait_for("down after stop", Duration::from_secs(10), |h| {
            h.iter().skip(mark).any(|s| common::down_error(s).is_some())
        })
        .await;
    let restarted = script(&["start", "--port", &port], dir.path());
    assert_eq!(restarted["fingerprint"], started["fingerprint"]);
    let mark = keeper.history().len();
    keeper.wait_up_after(mark, Duration::from_mins(1)).await;
    wait_usable(remote, Duration::from_secs(10)).await;

    keeper.stop().await;
    script(&["stop"], dir.path());
}
