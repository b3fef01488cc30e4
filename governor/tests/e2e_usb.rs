//! A rental on a USB drive, end to end: the governor binary with `storageDevice` naming a loop
//! device (a sparse file standing in for the drive), the devserver and the real Docker engine. What
//! the renter wrote (in their storage, and anywhere in the container: its writable layer is bound
//! from the drive) lands on the drive, and nothing of it is left on the raw device after the wipe.
//! Plain mode (`encryptStorage: false`): this machine's kernel has no dm-crypt.

mod common;

use std::time::Duration;

use common::{Cleanup, admin_device, docker, random_device, start_governor, status, wait_for};
use p2pvps_testkit::{Loop, grep};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rental_on_a_usb_drive_leaves_nothing_behind() {
    let images = tempfile::tempdir().unwrap();
    // Declared before the container's cleanup, so dropped after it: the drive outlives its users.
    let disk = Loop::new(&images.path().join("usb.img"), 256);
    let device = random_device();
    let name = format!("p2pvps-usb-{}", &device[..12]);
    let _cleanup = Cleanup(vec![name.clone()]);
    let server = common::devserver(&device, Some(Duration::from_secs(15))).await;
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("device-config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"deviceId": "{device}", "serverUrl": "{}", "storageDevice": "{}", "encryptStorage": false,
                "heartbeatSeconds": 2, "led": "none"}}"#,
            server.url(),
            disk.dev.display()
        ),
    )
    .unwrap();
    let state = tmp.path().join("state");
    let network = common::Network::create();
    let governor = start_governor(&config, &state, &name, &network.name);

    let first = wait_for("the first rental", Duration::from_mins(1), async || {
        let d = admin_device(&server.url(), &device).await;
        (d["registrations"] == 1 && status(&state)["phase"] == "serving").then_some(d)
    })
    .await;
    let user = first["lease"]["username"].as_str().unwrap().to_owned();
    // The drive was offered to the marketplace as the disk space.
    assert_eq!(first["specs"]["diskSpace"], "0 GB");
    let secret = format!("renter-secret-{}", random_device());
    let (ok, _, err) = docker(&[
        "exec",
        "-u",
        &user,
        &name,
        "sh",
        "-c",
        &format!("echo {secret} > /media/storage/canary && sync"),
    ]);
    assert!(ok, "{err}");
    // It is on the drive, in the rental's ext4 partition.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let partition = format!("{}p1", disk.dev.display());
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(&format!(" {partition} ")) && l.contains(state.to_str().unwrap())),
        "the rental's storage is not mounted from {partition}"
    );
    assert!(
        grep(&disk.dev, &secret),
        "the canary never reached the drive"
    );
    let layer_secret = write_in_the_container(&name, &partition);
    // Read from the drive's backing file: the device's own page cache still holds what the first
    // grep read before this was written.
    assert!(
        grep(&disk.image, &layer_secret),
        "the container's own files never reached the drive"
    );

    // The lease ends: wipe, verify, and a new rental on a fresh volume.
    let second = wait_for("the second rental", Duration::from_mins(2), async || {
        let d = admin_device(&server.url(), &device).await;
        (d["registrations"] == 2 && status(&state)["phase"] == "serving").then_some(d)
    })
    .await;
    assert!(
        !grep(&disk.dev, &secret) && !grep(&disk.image, &layer_secret),
        "the previous renter's data survived the wipe"
    );
    let (ok, _, _) = docker(&["exec", &name, "test", "-e", "/var/tmp/canary"]);
    assert!(!ok, "the new renter's container has the old one's files");
    let user2 = second["lease"]["username"].as_str().unwrap();
    let (_, ls, _) = docker(&["exec", &name, "ls", "-A", "/media/storage"]);
    assert!(
        !ls.contains("canary"),
        "the new renter sees the old files: {ls}"
    );
    let (ok, _, _) = docker(&["exec", "-u", user2, &name, "touch", "/media/storage/mine"]);
    assert!(ok, "the new renter cannot write its storage");
    drop(governor);
    server.stop().await;
}

/// The renter writes anywhere else in the container `name`: its writable layer's home must be
/// mounted from the drive's `partition`. Returns what was written.
fn write_in_the_container(name: &str, partition: &str) -> String {
    let layer_secret = format!("layer-secret-{}", random_device());
    let (ok, _, err) = docker(&[
        "exec",
        name,
        "sh",
        "-c",
        &format!("echo {layer_secret} > /var/tmp/canary && sync"),
    ]);
    assert!(ok, "{err}");
    // Once more from the host: under fuse-overlayfs (this machine's engine) the daemon may write
    // the file into the upper directory after the container's sync passed the drive.
    assert!(common::run("sync", &[]).0);
    let (_, upper, _) = docker(&[
        "inspect",
        "--format",
        "{{.GraphDriver.Data.UpperDir}}",
        name,
    ]);
    let home = std::path::Path::new(&upper)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(home.as_str())
                && l.contains(&format!(" {partition} "))),
        "the container's layer {home} is not mounted from {partition}"
    );
    layer_secret
}
