//! The tunnel keeper against a real OpenSSH sshd on 127.0.0.1: up, logins, host key pins, an
//! endpoint restart, a dead link, and a stale port. Needs root (sshd) and the tunnel user, which
//! these tests create with `scripts/tunnel-endpoint setup`.

mod common;

use std::net::TcpListener as StdListener;
use std::time::{Duration, Instant};

use common::{
    Endpoint, EndpointOptions, FreezableRelay, Keeper, down_error, echo_server, free_port, keygen,
    parse, round_trip, settings_json, wait_usable,
};
use p2pvps_connector::TunnelState;
use serde_json::json;

const UP_QUICKLY: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carries_concurrent_connections_to_the_local_service() {
    let endpoint = Endpoint::start();
    let local = echo_server().await;
    let remote = free_port();
    let mut keeper = Keeper::start(parse(&settings_json(&endpoint, remote, local)));
    keeper.wait_up_after(0, UP_QUICKLY).await;
    assert_eq!(keeper.history()[0], TunnelState::Connecting);

    // Eight renters at once, each with its own bytes (one of them 2 MiB, beyond SSH's windows).
    let sessions = (0..8_u8).map(|i| {
        let size = if i == 0 { 2 << 20 } else { 16 << 10 };
        let payload: Vec<u8> = (0..size)
            .map(|n: u32| n.to_le_bytes()[0].wrapping_mul(31) ^ i)
            .collect();
        tokio::spawn(async move {
            let back = round_trip(remote, &payload).await.expect("round trip");
            assert!(
                back == payload,
                "connection {i}: {} bytes back of {}",
                back.len(),
                payload.len()
            );
        })
    });
    for s in sessions {
        s.await.expect("connection task");
    }
    assert!(
        endpoint
            .log()
            .contains("Accepted password for p2pvps-tunnel"),
        "{}",
        endpoint.log()
    );
    keeper.stop().await;
    assert!(
        round_trip(remote, b"x").await.is_err(),
        "the forward is gone once the keeper stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_authentication_works() {
    let endpoint = Endpoint::start();
    let key = endpoint.path("client_key");
    keygen(&key);
    endpoint.authorize_key(&endpoint.path("client_key.pub"));
    let local = echo_server().await;
    let remote = free_port();
    let mut settings = settings_json(&endpoint, remote, local);
    settings.as_object_mut().unwrap().remove("password");
    settings["privateKey"] = json!(std::fs::read_to_string(&key).unwrap());

    let mut keeper = Keeper::start(parse(&settings));
    keeper.wait_up_after(0, UP_QUICKLY).await;
    wait_usable(remote, UP_QUICKLY).await;
    assert!(
        endpoint
            .log()
            .contains("Accepted publickey for p2pvps-tunnel"),
        "{}",
        endpoint.log()
    );
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_failure_and_is_retried() {
    let endpoint = Endpoint::start();
    let local = echo_server().await;
    let mut settings = settings_json(&endpoint, free_port(), local);
    settings["password"] = json!("not-the-password");
    let mut keeper = Keeper::start(parse(&settings));

    let h = keeper
        .wait_for("down twice", Duration::from_secs(20), |h| {
            h.iter().filter(|s| down_error(s).is_some()).count() >= 2
        })
        .await;
    for error in h.iter().filter_map(down_error) {
        assert_eq!(
            error,
            "the server rejected password authentication for user p2pvps-tunnel"
        );
    }
    assert!(!h.iter().any(TunnelState::is_up));
    // Each retry starts with a new connection attempt.
    assert!(h.iter().filter(|s| **s == TunnelState::Connecting).count() >= 2);
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_pinned_host_key_connects() {
    let endpoint = Endpoint::start();
    let local = echo_server().await;
    let remote = free_port();
    let mut settings = settings_json(&endpoint, remote, local);
    settings["hostKey"] = json!(endpoint.fingerprint);
    let mut keeper = Keeper::start(parse(&settings));
    keeper.wait_up_after(0, UP_QUICKLY).await;
    wait_usable(remote, UP_QUICKLY).await;
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pinned_host_key_never_connects() {
    let endpoint = Endpoint::start();
    let other = endpoint.path("other_key");
    keygen(&other);
    let pin = common::fingerprint(&endpoint.path("other_key.pub"));
    assert_ne!(pin, endpoint.fingerprint);
    let local = echo_server().await;
    let mut settings = settings_json(&endpoint, free_port(), local);
    settings["hostKey"] = json!(pin);
    let mut keeper = Keeper::start(parse(&settings));

    let error = keeper
        .wait_down_after(0, "host key mismatch", Duration::from_secs(10))
        .await;
    assert!(error.contains(&pin), "names the expected key: {error}");
    assert!(
        error.contains(&endpoint.fingerprint),
        "names the key the server presented: {error}"
    );
    // Retried, and still refused: the pin is not a one-off check.
    let h = keeper
        .wait_for("down twice", Duration::from_secs(10), |h| {
            h.iter().filter(|s| down_error(s).is_some()).count() >= 2
        })
        .await;
    assert!(!h.iter().any(TunnelState::is_up));
    // The host key is checked before logging in: the impostor never saw the password.
    let log = endpoint.log();
    assert!(!log.contains("Accepted"), "{log}");
    assert!(!log.contains("Failed password"), "{log}");
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comes_back_after_the_endpoint_restarts() {
    let mut endpoint = Endpoint::start();
    let local = echo_server().await;
    let remote = free_port();
    let mut settings = settings_json(&endpoint, remote, local);
    settings["keepaliveSeconds"] = json!(1);
    settings["keepaliveMax"] = json!(2);
    let mut keeper = Keeper::start(parse(&settings));
    keeper.wait_up_after(0, UP_QUICKLY).await;
    wait_usable(remote, UP_QUICKLY).await;

    let mark = keeper.history().len();
    endpoint.kill();
    keeper
        .wait_for("down after the kill", Duration::from_secs(10), |h| {
            h.iter().skip(mark).any(|s| down_error(s).is_some())
        })
        .await;
    // Down for a few seconds, so that attempts meet a closed port before the restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    endpoint.restart();
    let mark = keeper.history().len();
    keeper.wait_up_after(mark, Duration::from_secs(90)).await;
    wait_usable(remote, UP_QUICKLY).await;
    assert!(
        restarted.elapsed() < Duration::from_secs(90),
        "{:?}",
        restarted.elapsed()
    );
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_link_is_noticed_by_keepalives_and_healed() {
    // The endpoint frees a dead session's port after 2 s, as production's 15 s × 3 would.
    let endpoint = Endpoint::start_with(EndpointOptions {
        client_alive: Some((1, 2)),
        ..EndpointOptions::default()
    });
    let relay = FreezableRelay::start(endpoint.port).await;
    let local = echo_server().await;
    let remote = free_port();
    let mut settings = settings_json(&endpoint, remote, local);
    settings["serverPort"] = json!(relay.port);
    settings["keepaliveSeconds"] = json!(1);
    settings["keepaliveMax"] = json!(2);
    let mut keeper = Keeper::start(parse(&settings));
    keeper.wait_up_after(0, UP_QUICKLY).await;
    wait_usable(remote, UP_QUICKLY).await;

    // The link goes silent: no FIN, no RST, nothing. Only keepalives can tell.
    let mark = keeper.history().len();
    let frozen = Instant::now();
    relay.freeze_current();
    keeper
        .wait_down_after(mark, "keepalives", Duration::from_secs(15))
        .await;
    let noticed = frozen.elapsed();
    // 1 s interval, 2 unanswered: about 3 s.
    assert!(
        noticed < Duration::from_secs(10),
        "noticed after {noticed:?}"
    );

    let mark = keeper.history().len();
    keeper.wait_up_after(mark, Duration::from_mins(1)).await;
    wait_usable(remote, UP_QUICKLY).await;
    keeper.stop().await;
}

/// The endpoint's shipped config lets a device hold only the marketplace's ports (6000-6200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_refuses_ports_outside_the_marketplace_range() {
    let endpoint = Endpoint::start_with(EndpointOptions {
        marketplace_ports: true,
        ..EndpointOptions::default()
    });
    let local = echo_server().await;
    let outside = free_port();
    assert!(!(6000..=6200).contains(&outside));
    let mut keeper = Keeper::start(parse(&settings_json(&endpoint, outside, local)));
    keeper
        .wait_down_after(0, "refused the remote forward", UP_QUICKLY)
        .await;
    keeper.stop().await;

    // A port of the range, free on this host, is granted.
    let inside = (6000..=6200)
        .find(|p| StdListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 6000-6200");
    let mut keeper = Keeper::start(parse(&settings_json(&endpoint, inside, local)));
    keeper.wait_up_after(0, UP_QUICKLY).await;
    wait_usable(inside, UP_QUICKLY).await;
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_port_is_refused_then_recovered() {
    let endpoint = Endpoint::start();
    let local = echo_server().await;
    let remote = free_port();
    // Something else holds the port on the endpoint, as a previous session that has not yet
    // timed out would.
    let squatter = StdListener::bind(("127.0.0.1", remote)).expect("hold the remote port");
    let mut keeper = Keeper::start(parse(&settings_json(&endpoint, remote, local)));

    let h = keeper
        .wait_for("refused twice", Duration::from_secs(20), |h| {
            h.iter()
                .filter_map(down_error)
                .filter(|e| e.contains("refused the remote forward"))
                .count()
                >= 2
        })
        .await;
    assert!(!h.iter().any(TunnelState::is_up));
    let error = h.iter().find_map(down_error).unwrap();
    assert!(
        error.contains(&format!("127.0.0.1:{remote}")),
        "names the forward: {error}"
    );

    drop(squatter);
    let released = Instant::now();
    let mark = keeper.history().len();
    // The retry after the release comes within the backoff cap (60 s) plus a connection.
    keeper.wait_up_after(mark, Duration::from_secs(65)).await;
    wait_usable(remote, UP_QUICKLY).await;
    assert!(released.elapsed() < Duration::from_secs(65));
    keeper.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_local_sshd_refuses_the_connection_but_keeps_the_tunnel() {
    let endpoint = Endpoint::start();
    // Nothing listens here: the container's sshd is not running (yet).
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let remote = free_port();
    let mut keeper = Keeper::start(parse(&settings_json(&endpoint, remote, local)));
    keeper.wait_up_after(0, UP_QUICKLY).await;

    let started = Instant::now();
    let back = round_trip(remote, b"hello").await;
    // The renter's connection is closed at once, without an echo, rather than left hanging.
    assert!(back.as_deref().map_or(true, <[u8]>::is_empty), "{back:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Once it runs, the same tunnel serves it: no reconnect was needed.
    let listener = tokio::net::TcpListener::bind(local)
        .await
        .expect("bind local");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (mut rd, mut wr) = stream.into_split();
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
        }
    });
    wait_usable(remote, UP_QUICKLY).await;
    assert_eq!(
        keeper.history().iter().filter(|s| s.is_up()).count(),
        1,
        "{:?}",
        keeper.history()
    );
    assert!(!keeper.history().iter().any(|s| down_error(s).is_some()));
    keeper.stop().await;
}
