//! `--state`: devices and leases survive a stop and a new spawn with the same file.

mod common;

use std::time::Duration;

use common::{DEVICE, OTHER, admin_device, any_port, client, get, register_ok, start_with};
use p2pvps_devserver::{DevServerError, Options};
use serde_json::{Value, json};

fn options(state: &std::path::Path, devices: &[&str]) -> Options {
    Options {
        devices: devices.iter().map(ToString::to_string).collect(),
        state_file: Some(state.to_path_buf()),
        ..Options::default()
    }
}

#[tokio::test]
async fn devices_and_leases_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("devserver-state.json");

    let server = start_with(options(&state, &[DEVICE])).await;
    assert!(state.exists(), "the state is written at start");
    let client = client();
    let device = register_ok(&client, &server, DEVICE).await;
    let checkin = get(&client, &server, &format!("/api/client/checkin/{DEVICE}")).await;
    assert_eq!(checkin.status(), 200);
    let before = admin_device(&client, &server, DEVICE).await;
    server.stop().await;

    let on_disk: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(
        on_disk["devices"][0]["lease"]["username"],
        device["username"]
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temp file left behind: {leftovers:?}"
    );

    // Restart without --device: the file alone brings the device back; OTHER is added to it.
    let server = start_with(options(&state, &[OTHER])).await;
    let after = admin_device(&client, &server, DEVICE).await;
    assert_eq!(after, before);
    assert_eq!(after["lease"]["password"], device["password"]);
    assert_eq!(
        admin_device(&client, &server, OTHER).await["registrations"],
        0
    );
    let seen: Value = get(
        &client,
        &server,
        &format!("/api/client/expiration/{DEVICE}"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(seen, json!({ "expiration": device["expiration"] }));

    // The port rotation continues too: the next lease does not reuse the last port.
    let again = register_ok(&client, &server, DEVICE).await;
    assert_ne!(again["port"], device["port"]);
    server.stop().await;
}

#[tokio::test]
async fn admin_changes_are_saved_immediately() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = start_with(options(&state, &[])).await;
    let client = client();
    let added = client
        .post(format!("{}/admin/devices/{DEVICE}", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    register_ok(&client, &server, DEVICE).await;
    let set = client
        .put(format!("{}/admin/expiration/{DEVICE}", server.url()))
        .json(&json!({"expiration": "2031-02-03T04:05:06.789Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);

    // Read the file while the server still runs: no stop needed for the change to be on disk.
    let on_disk: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(on_disk["devices"][0]["id"], DEVICE);
    assert_eq!(
        on_disk["devices"][0]["lease"]["expiration"],
        "2031-02-03T04:05:06.789Z"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_corrupt_state_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("broken.json");
    std::fs::write(&state, "{ not json").unwrap();
    let error = p2pvps_devserver::spawn(any_port(), options(&state, &[DEVICE]))
        .await
        .expect_err("a corrupt state file refuses to start");
    assert!(
        matches!(error, DevServerError::ParseState { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("broken.json"), "{error}");
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        "{ not json",
        "left untouched"
    );
}

#[tokio::test]
async fn invalid_options_are_refused() {
    let bad_id = p2pvps_devserver::spawn(
        any_port(),
        Options {
            devices: vec!["xyz".into()],
            ..Options::default()
        },
    )
    .await
    .expect_err("an invalid device id is refused");
    assert!(bad_id.to_string().contains("\"xyz\""), "{bad_id}");

    let zero_port = p2pvps_devserver::spawn(
        any_port(),
        Options {
            first_port: 0,
            ..Options::default()
        },
    )
    .await
    .expect_err("port 0 is refused");
    assert!(matches!(zero_port, DevServerError::InvalidFirstPort));

    let huge = p2pvps_devserver::spawn(
        any_port(),
        Options {
            lease: Duration::from_secs(u64::MAX),
            ..Options::default()
        },
    )
    .await
    .expect_err("an absurd lease is refused");
    assert!(
        matches!(huge, DevServerError::LeaseTooLong { .. }),
        "{huge:?}"
    );
}
