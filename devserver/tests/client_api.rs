//! The client API over real HTTP: shapes, status codes and exact plain-text error bodies.

mod common;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::{
    DEVICE, OTHER, UNKNOWN, admin_device, client, get, is_alnum10, parse_js_iso, register,
    register_ok, start, start_with, status_text,
};
use p2pvps_devserver::Options;
use serde_json::{Value, json};

#[tokio::test]
async fn register_answers_device_with_lease_credentials_and_port() {
    let server = start(&[DEVICE]).await;
    let client = client();
    let before = Utc::now();
    let device = register_ok(&client, &server, DEVICE).await;

    assert_eq!(device["_id"], DEVICE);
    assert_eq!(device["__v"], 0);
    assert_eq!(device["memory"], "3.7 GB");
    assert_eq!(device["diskSpace"], "58 GB");
    assert_eq!(device["processor"], "Cortex-A72");
    assert_eq!(device["internetSpeed"], "100 Mbps");
    assert!(device["ownerUser"].is_string());
    assert!(device["deviceName"].is_string());
    assert!(
        is_alnum10(&device["username"]),
        "username {}",
        device["username"]
    );
    assert!(
        is_alnum10(&device["password"]),
        "password {}",
        device["password"]
    );
    let port = device["port"].as_u64().expect("port is an integer");
    assert!((6000..=6200).contains(&port), "port {port}");

    let expiration = parse_js_iso(&device["expiration"]);
    let day = TimeDelta::days(1);
    let slack = TimeDelta::seconds(5);
    assert!(expiration >= before + day - TimeDelta::milliseconds(1));
    assert!(expiration <= Utc::now() + day + slack);
    parse_js_iso(&device["checkinTimeStamp"]);
    parse_js_iso(&device["rentStartDate"]);

    server.stop().await;
}

#[tokio::test]
async fn register_accepts_uppercase_id_and_answers_lowercase() {
    let server = start(&[DEVICE]).await;
    let device = register_ok(&client(), &server, &DEVICE.to_uppercase()).await;
    assert_eq!(device["_id"], DEVICE);
    server.stop().await;
}

#[tokio::test]
async fn reregistration_gives_new_credentials_a_new_port_and_a_new_lease() {
    let server = start_with(Options {
        devices: vec![DEVICE.into()],
        lease: Duration::from_hours(1),
        first_port: 7000,
        ..Options::default()
    })
    .await;
    let client = client();
    let first = register_ok(&client, &server, DEVICE).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = register_ok(&client, &server, DEVICE).await;

    assert_ne!(first["username"], second["username"]);
    assert_ne!(first["password"], second["password"]);
    assert_ne!(first["port"], second["port"]);
    for device in [&first, &second] {
        let port = device["port"].as_u64().unwrap();
        assert!((7000..=7200).contains(&port), "port {port}");
    }
    let (e1, e2) = (
        parse_js_iso(&first["expiration"]),
        parse_js_iso(&second["expiration"]),
    );
    assert!(e2 > e1, "the second lease starts later: {e1} then {e2}");
    assert!(e2 <= Utc::now() + TimeDelta::hours(1));

    let admin = admin_device(&client, &server, DEVICE).await;
    assert_eq!(admin["registrations"], 2);
    assert_eq!(admin["lease"]["username"], second["username"]);
    assert_eq!(admin["lease"]["password"], second["password"]);
    assert_eq!(admin["lease"]["port"], second["port"]);
    assert_eq!(admin["specs"]["processor"], "Cortex-A72");
    server.stop().await;
}

#[tokio::test]
async fn two_live_leases_never_share_a_port() {
    let server = start(&[DEVICE, OTHER]).await;
    let client = client();
    let a = register_ok(&client, &server, DEVICE).await;
    let b = register_ok(&client, &server, OTHER).await;
    let a2 = register_ok(&client, &server, DEVICE).await;
    assert_ne!(a["port"], b["port"]);
    assert_ne!(a2["port"], b["port"]);
    assert_ne!(a2["port"], a["port"]);
    server.stop().await;
}

#[tokio::test]
async fn invalid_ids_are_422_invalid_guid_on_every_route() {
    let server = start(&[DEVICE]).await;
    let client = client();
    for bad in [
        "123",
        "5a2608cfd7df9800266a339g",
        "5a2608cfd7df9800266a339d0",
    ] {
        let response = register(&client, &server, bad).await;
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"),
            "error bodies are plain text"
        );
        assert_eq!(status_text(response).await, (422, "Invalid GUID".into()));
        let checkin = get(&client, &server, &format!("/api/client/checkin/{bad}")).await;
        assert_eq!(status_text(checkin).await, (422, "Invalid GUID".into()));
        let expiration = get(&client, &server, &format!("/api/client/expiration/{bad}")).await;
        assert_eq!(status_text(expiration).await, (422, "Invalid GUID".into()));
    }
    server.stop().await;
}

#[tokio::test]
async fn unknown_devices_are_404_on_every_route() {
    let server = start(&[DEVICE]).await;
    let client = client();
    let expected = (404, "Could not find that device.".to_owned());
    assert_eq!(
        status_text(register(&client, &server, UNKNOWN).await).await,
        expected
    );
    let checkin = get(&client, &server, &format!("/api/client/checkin/{UNKNOWN}")).await;
    assert_eq!(status_text(checkin).await, expected);
    let expiration = get(
        &client,
        &server,
        &format!("/api/client/expiration/{UNKNOWN}"),
    )
    .await;
    assert_eq!(status_text(expiration).await, expected);
    server.stop().await;
}

#[tokio::test]
async fn bad_register_bodies_are_400_naming_the_problem() {
    let server = start(&[DEVICE]).await;
    let client = client();
    let url = format!("{}/api/client/register/{DEVICE}", server.url());
    let cases: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (client.post(&url).body("not json"), "not valid JSON"),
        (client.post(&url), "not valid JSON"),
        (client.post(&url).json(&json!(["memory"])), "JSON object"),
        (
            client
                .post(&url)
                .json(&json!({"memory": "1 GB", "diskSpace": "8 GB", "processor": "x"})),
            "internetSpeed is missing",
        ),
        (
            client.post(&url).json(
                &json!({"memory": 1, "diskSpace": "8 GB", "processor": "x", "internetSpeed": "y"}),
            ),
            "memory must be a string",
        ),
    ];
    for (request, needle) in cases {
        let (status, text) = status_text(request.send().await.unwrap()).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(needle), "{text:?} mentions {needle:?}");
    }
    let admin = admin_device(&client, &server, DEVICE).await;
    assert_eq!(
        admin["registrations"], 0,
        "a rejected body registers nothing"
    );
    assert_eq!(admin["lease"], Value::Null);
    server.stop().await;
}

#[tokio::test]
async fn checkin_answers_success_and_is_counted() {
    let server = start(&[DEVICE]).await;
    let client = client();
    let before = Utc::now() - TimeDelta::milliseconds(1);
    for _ in 0..3 {
        let response = get(&client, &server, &format!("/api/client/checkin/{DEVICE}")).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({"success": true}));
    }
    let admin = admin_device(&client, &server, DEVICE).await;
    assert_eq!(admin["checkins"], 3);
    let last = parse_js_iso(&admin["lastCheckin"]);
    assert!(last >= before && last <= Utc::now());
    server.stop().await;
}

#[tokio::test]
async fn expiration_is_404_before_registration_and_the_lease_end_after() {
    let server = start(&[DEVICE]).await;
    let client = client();
    let path = format!("/api/client/expiration/{DEVICE}");
    assert_eq!(
        status_text(get(&client, &server, &path).await).await,
        (404, "Device has no rental.".into())
    );
    let device = register_ok(&client, &server, DEVICE).await;
    let response = get(&client, &server, &path).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"expiration": device["expiration"]}));
    parse_js_iso(&body["expiration"]);
    server.stop().await;
}
