//! One whole rental cycle, end to end: the governor binary against p2pvps-devserver over HTTP on
//! 127.0.0.1 and the real Docker engine with the locally built renter image.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{Cleanup, admin_device, docker, random_device, start_governor, status, wait_for};

const LEASE: Duration = Duration::from_secs(20);

/// The rentals' volumes, as mounted (their image files beside them are not listed).
fn storage_dirs(state: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state.join("storage"))
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one story, told step by step
async fn a_rental_cycle_on_the_real_engine() {
    let device = random_device();
    let name = format!("p2pvps-e2e-{device}");
    let _cleanup = Cleanup(vec![name.clone()]);
    let server = common::devserver(&device, Some(LEASE)).await;
    let base = server.url();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("device-config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"deviceId": "{device}", "serverUrl": "{base}", "storageDevice": "none", "storageSizeMb": 64, "heartbeatSeconds": 2, "led": "none"}}"#
        ),
    )
    .unwrap();
    let state = tmp.path().join("state");
    let network = common::Network::create();
    let governor = start_governor(&config, &state, &name, &network.name);

    // Registered, and the container runs with the login.
    let first = wait_for(
        "first registration and container",
        Duration::from_mins(1),
        async || {
            let d = admin_device(&base, &device).await;
            let running = docker(&["inspect", "--format", "{{.State.Running}}", &name]).1 == "true";
            let serving = status(&state)["phase"] == "serving";
            (d["registrations"] == 1 && running && serving).then_some(d)
        },
    )
    .await;
    let user = first["lease"]["username"].as_str().unwrap().to_owned();
    let expiration: DateTime<Utc> = first["lease"]["expiration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (ok, _, err) = docker(&["exec", &name, "id", &user]);
    assert!(ok, "login user missing: {err}");
    let (ok, _, err) = docker(&[
        "exec",
        "-u",
        &user,
        &name,
        "sh",
        "-c",
        "echo secret > /media/storage/canary",
    ]);
    assert!(ok, "storage not writable by the renter: {err}");
    let dirs = storage_dirs(&state);
    assert_eq!(dirs.len(), 1);
    assert_eq!(
        std::fs::read_to_string(dirs[0].join("canary")).unwrap(),
        "secret\n"
    );
    let st = status(&state);
    assert_eq!(st["username"], user.as_str());
    assert_eq!(st["port"], first["lease"]["port"]);
    let state_text = std::fs::read_to_string(state.join("state.json")).unwrap();
    let password = first["lease"]["password"].as_str().unwrap();
    assert!(
        !state_text.contains(password),
        "the plain password reached the state file"
    );
    assert!(
        !serde_json::to_string(&st).unwrap().contains("$6$"),
        "status shows the hash"
    );

    // The lease ends: the container is gone within 2 s of the expiration instant. Watched by id:
    // the next rental's container takes the same name within a second.
    let (_, first_id, _) = docker(&["inspect", "--format", "{{.Id}}", &name]);
    let gone_at = wait_for(
        "container removal",
        LEASE + Duration::from_secs(15),
        async || {
            let (exists, _, _) = docker(&["inspect", &first_id]);
            (!exists).then(Utc::now)
        },
    )
    .await;
    let late = (gone_at - expiration).to_std().unwrap_or_default();
    eprintln!(
        "container gone {} ms after the expiration",
        (gone_at - expiration).num_milliseconds()
    );
    assert!(
        late <= Duration::from_secs(2),
        "container removed {late:?} after the expiration"
    );

    // Storage wiped, second registration with new credentials and a new container.
    let second = wait_for("second registration", Duration::from_secs(30), async || {
        let d = admin_device(&base, &device).await;
        let running = docker(&["inspect", "--format", "{{.State.Running}}", &name]).1 == "true";
        (d["registrations"] == 2 && running && status(&state)["phase"] == "serving").then_some(d)
    })
    .await;
    assert!(!dirs[0].exists(), "the first renter's storage survived");
    let user2 = second["lease"]["username"].as_str().unwrap();
    assert_ne!(user2, user);
    assert_ne!(second["lease"]["password"], first["lease"]["password"]);
    assert!(docker(&["exec", &name, "id", user2]).0);
    assert!(
        !docker(&["exec", &name, "id", &user]).0,
        "the old login survived"
    );
    let (_, ls, _) = docker(&["exec", &name, "ls", "-A", "/media/storage"]);
    assert_eq!(ls, "", "the new renter sees old files");
    assert_eq!(status(&state)["rentalsCompleted"], 1);

    // SIGTERM stops the governor cleanly and leaves the renter's container running.
    let mut governor = governor;
    let pid = governor.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let code = governor.0.wait().unwrap();
    assert!(code.success(), "governor exit: {code}");
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Running}}", &name]).1,
        "true"
    );
    server.stop().await;
}
