//! The REST client against p2pvps-devserver over real HTTP: the wire format of both sides (each has
//! its own types) must agree.

mod common;

use std::time::Duration;

use p2pvps_governor::clock::TimeSource;
use p2pvps_governor::marketplace::{Marketplace, MarketplaceApi as _, Specs};
use p2pvps_governor::types::DeviceId;

fn specs() -> Specs {
    Specs {
        memory: "3884 MB".into(),
        disk_space: "58 GB".into(),
        processor: "Cortex-A72 x4".into(),
        internet_speed: "unmeasured".into(),
    }
}

#[tokio::test]
async fn register_check_in_and_expiration_round_trip() {
    let device = common::random_device();
    let server = common::devserver(&device, Some(Duration::from_hours(1))).await;
    let url = reqwest::Url::parse(&server.url()).unwrap();
    let time = TimeSource::until("/nonexistent/synchronized");
    let client = Marketplace::new(&url, DeviceId::parse(&device).unwrap())
        .unwrap()
        .with_time_source(time.clone());
    assert_eq!(time.server_now(), None);

    let e = client.expiration().await.unwrap_err();
    assert!(e.to_string().contains("404"), "before registration: {e}");
    // Even a refusal tells the server's time (its Date header, to the second).
    let server_now = time.server_now().expect("the answer's Date was read");
    let off = (server_now - chrono::Utc::now()).abs();
    assert!(
        off < chrono::Duration::seconds(3),
        "server time off by {off}"
    );

    let before = chrono::Utc::now();
    let lease = client.register(&specs()).await.unwrap();
    assert_eq!(lease.username.as_str().len(), 10);
    assert_eq!(lease.password.expose().len(), 10);
    assert!((6000..=6200).contains(&lease.port.get()));
    let lease_len = lease.expiration - before;
    assert!(
        lease_len > chrono::Duration::seconds(3590) && lease_len <= chrono::Duration::seconds(3601)
    );

    client.check_in().await.unwrap();
    assert_eq!(client.expiration().await.unwrap(), lease.expiration);

    let admin = common::admin_device(&server.url(), &device).await;
    assert_eq!(admin["registrations"], 1);
    assert_eq!(admin["checkins"], 1);
    assert_eq!(admin["specs"]["processor"], "Cortex-A72 x4");
    assert_eq!(admin["specs"]["internetSpeed"], "unmeasured");
    assert_eq!(admin["lease"]["username"], lease.username.as_str());

    let again = client.register(&specs()).await.unwrap();
    assert_ne!(again.username, lease.username);
    assert_ne!(again.port, lease.port);

    // An unknown device is a 404 the lifecycle reports to the owner.
    let stranger =
        Marketplace::new(&url, DeviceId::parse(&common::random_device()).unwrap()).unwrap();
    let e = stranger.register(&specs()).await.unwrap_err();
    assert!(e.is_unknown_device(), "{e}");
    assert!(e.to_string().contains("Could not find that device."), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn an_injected_server_error_is_reported() {
    let device = common::random_device();
    let server = common::devserver(&device, None).await;
    let http = common::http();
    http.put(format!("{}/admin/fault", server.url()))
        .json(&serde_json::json!({"mode": "error"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let url = reqwest::Url::parse(&server.url()).unwrap();
    let client = Marketplace::new(&url, DeviceId::parse(&device).unwrap()).unwrap();
    let e = client.check_in().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("500 Internal Server Error: Internal server error (injected)"),
        "{e}"
    );
    server.stop().await;
}
