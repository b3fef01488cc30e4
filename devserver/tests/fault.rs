//! Fault injection: `error` answers 500, `hang` never answers until the mode changes, `none`
//! restores service; admin routes keep working throughout.

mod common;

use std::time::Duration;

use common::{DEVICE, client, get, register, set_fault, start, status_text};
use serde_json::Value;

#[tokio::test]
async fn error_mode_answers_500_on_client_routes_only() {
    let server = start(&[DEVICE]).await;
    let client = client();
    set_fault(&client, &server, "error").await;

    let injected = (500, "Internal server error (injected)".to_owned());
    assert_eq!(
        status_text(register(&client, &server, DEVICE).await).await,
        injected
    );
    let checkin = get(&client, &server, &format!("/api/client/checkin/{DEVICE}")).await;
    assert_eq!(status_text(checkin).await, injected);
    let expiration = get(
        &client,
        &server,
        &format!("/api/client/expiration/{DEVICE}"),
    )
    .await;
    assert_eq!(status_text(expiration).await, injected);

    let admin = get(&client, &server, "/admin/devices").await;
    assert_eq!(admin.status(), 200, "admin routes are not faulted");
    let list: Value = admin.json().await.unwrap();
    assert_eq!(list[0]["checkins"], 0, "a faulted request does nothing");

    set_fault(&client, &server, "none").await;
    let checkin = get(&client, &server, &format!("/api/client/checkin/{DEVICE}")).await;
    assert_eq!(checkin.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn hang_mode_never_answers_until_the_mode_changes() {
    let server = start(&[DEVICE]).await;
    let admin = client();
    set_fault(&admin, &server, "hang").await;

    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = impatient
        .get(format!("{}/api/client/checkin/{DEVICE}", server.url()))
        .send()
        .await
        .expect_err("a hung request times out");
    assert!(error.is_timeout(), "{error}");

    // A patient request is held, then served once the fault is lifted.
    let url = format!("{}/api/client/checkin/{DEVICE}", server.url());
    let patient = tokio::spawn(async move { client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!patient.is_finished(), "the request is still held");
    let list: Value = get(&admin, &server, "/admin/devices")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        list[0]["checkins"], 0,
        "a held request has not reached the handler"
    );

    set_fault(&admin, &server, "none").await;
    let response = tokio::time::timeout(Duration::from_secs(5), patient)
        .await
        .expect("released promptly")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);

    let fresh = get(&admin, &server, &format!("/api/client/checkin/{DEVICE}")).await;
    assert_eq!(fresh.status(), 200);
    let list: Value = get(&admin, &server, "/admin/devices")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["checkins"], 2);
    server.stop().await;
}

#[tokio::test]
async fn stop_releases_hung_requests() {
    let server = start(&[DEVICE]).await;
    set_fault(&client(), &server, "hang").await;
    let url = format!("{}/api/client/expiration/{DEVICE}", server.url());
    let held = tokio::spawn(async move { client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished());

    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("stop does not wait for hung requests");
    let response = held
        .await
        .unwrap()
        .expect("the held request gets an answer");
    assert_eq!(
        status_text(response).await,
        (503, "Server shutting down".into())
    );
}
