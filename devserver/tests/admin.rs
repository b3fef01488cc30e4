//! The admin API: listing, adding devices, ending and moving leases.

mod common;

use chrono::{TimeDelta, Utc};
use common::{
    DEVICE, OTHER, UNKNOWN, admin_device, client, get, parse_js_iso, register_ok, start,
    status_text,
};
use serde_json::{Value, json};

#[tokio::test]
async fn list_shows_every_device_sorted_with_counters_and_lease() {
    let server = start(&[OTHER, DEVICE]).await;
    let client = client();
    let list: Value = get(&client, &server, "/admin/devices")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [DEVICE, OTHER]);
    let fresh = &list[0];
    assert_eq!(fresh["registrations"], 0);
    assert_eq!(fresh["checkins"], 0);
    assert_eq!(fresh["lastCheckin"], Value::Null);
    assert_eq!(fresh["specs"], Value::Null);
    assert_eq!(fresh["lease"], Value::Null);

    let device = register_ok(&client, &server, DEVICE).await;
    let admin = admin_device(&client, &server, DEVICE).await;
    assert_eq!(admin["registrations"], 1);
    assert_eq!(admin["specs"]["memory"], "3.7 GB");
    assert_eq!(admin["specs"]["diskSpace"], "58 GB");
    assert_eq!(admin["specs"]["internetSpeed"], "100 Mbps");
    assert_eq!(admin["lease"]["username"], device["username"]);
    assert_eq!(admin["lease"]["password"], device["password"]);
    assert_eq!(admin["lease"]["port"], device["port"]);
    assert_eq!(admin["lease"]["expiration"], device["expiration"]);
    server.stop().await;
}

#[tokio::test]
async fn add_device_at_runtime_is_idempotent() {
    let server = start(&[]).await;
    let client = client();
    let url = format!("{}/admin/devices/{DEVICE}", server.url());

    let before = get(&client, &server, &format!("/api/client/checkin/{DEVICE}")).await;
    assert_eq!(before.status(), 404);

    let created = client.post(&url).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["id"], DEVICE);

    let checkin = get(&client, &server, &format!("/api/client/checkin/{DEVICE}")).await;
    assert_eq!(checkin.status(), 200);

    let again = client.post(&url).send().await.unwrap();
    assert_eq!(again.status(), 200);
    let body: Value = again.json().await.unwrap();
    assert_eq!(
        body["checkins"], 1,
        "adding a known device keeps its record"
    );

    let bad = client
        .post(format!("{}/admin/devices/not-an-id", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(status_text(bad).await, (422, "Invalid GUID".into()));

    let list: Value = get(&client, &server, "/admin/devices")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn expire_ends_the_lease_now() {
    let server = start(&[DEVICE]).await;
    let client = client();
    let url = format!("{}/admin/expire/{DEVICE}", server.url());

    let no_lease = client.post(&url).send().await.unwrap();
    assert_eq!(
        status_text(no_lease).await,
        (404, "Device has no rental.".into())
    );
    let unknown = client
        .post(format!("{}/admin/expire/{UNKNOWN}", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_text(unknown).await,
        (404, "Could not find that device.".into())
    );

    register_ok(&client, &server, DEVICE).await;
    let before = Utc::now() - TimeDelta::milliseconds(1);
    let response = client.post(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let expiration = parse_js_iso(&body["expiration"]);
    assert!(expiration >= before && expiration <= Utc::now());

    let seen: Value = get(
        &client,
        &server,
        &format!("/api/client/expiration/{DEVICE}"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(seen["expiration"], body["expiration"]);
    server.stop().await;
}

#[tokio::test]
async fn set_expiration_moves_the_lease_end() {
    let server = start(&[DEVICE]).await;
    let client = client();
    let url = format!("{}/admin/expiration/{DEVICE}", server.url());
    let expiration_path = format!("/api/client/expiration/{DEVICE}");

    let no_lease = client
        .put(&url)
        .json(&json!({"expiration": "2030-01-01T00:00:00.000Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_text(no_lease).await,
        (404, "Device has no rental.".into())
    );

    register_ok(&client, &server, DEVICE).await;
    for (sent, stored) in [
        ("2030-01-02T03:04:05.678Z", "2030-01-02T03:04:05.678Z"),
        ("2020-06-01T12:00:00+02:00", "2020-06-01T10:00:00.000Z"),
    ] {
        let response = client
            .put(&url)
            .json(&json!({ "expiration": sent }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({ "expiration": stored }));
        let seen: Value = get(&client, &server, &expiration_path)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(seen, json!({ "expiration": stored }));
    }

    for bad in [
        json!({"expiration": "tomorrow"}),
        json!({"when": "2030-01-01T00:00:00Z"}),
    ] {
        let response = client.put(&url).json(&bad).send().await.unwrap();
        let (status, text) = status_text(response).await;
        assert_eq!(status, 400, "{bad}: {text}");
        assert!(text.contains("expiration"), "{text}");
    }
    let seen: Value = get(&client, &server, &expiration_path)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen["expiration"], "2020-06-01T10:00:00.000Z",
        "bad bodies change nothing"
    );
    server.stop().await;
}

#[tokio::test]
async fn fault_mode_can_be_read_and_rejects_unknown_modes() {
    let server = start(&[]).await;
    let client = client();
    let url = format!("{}/admin/fault", server.url());
    let mode: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(mode, json!({"mode": "none"}));

    let bad = client
        .put(&url)
        .json(&json!({"mode": "explode"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let set = client
        .put(&url)
        .json(&json!({"mode": "error"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.json::<Value>().await.unwrap(), json!({"mode": "error"}));
    let mode: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(mode, json!({"mode": "error"}));
    server.stop().await;
}
