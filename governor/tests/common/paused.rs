//! The lifecycle on a paused clock: its start instant, a test machine's specs and settings, waiting
//! for a condition, and running a lifecycle while a test drives it.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use p2pvps_governor::clock::Clock;
use p2pvps_governor::lifecycle::{Lifecycle, Settings};
use p2pvps_governor::marketplace::{MarketplaceApi, Specs};
use p2pvps_governor::runtime::{ContainerRuntime, Limits};
use p2pvps_governor::storage::Storage;
use p2pvps_governor::types::DeviceId;
use tokio::sync::oneshot;

/// Where the paused clock starts.
pub fn origin() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z")
        .unwrap()
        .to_utc()
}

/// The settings of a Pi 4 with device id `device` and a 10-minute heartbeat.
pub fn settings(device: &str) -> Settings {
    let specs = Specs {
        memory: "4000 MB".into(),
        disk_space: "58 GB".into(),
        processor: "Cortex-A72 x4".into(),
        internet_speed: "unmeasured".into(),
    };
    let mut settings = Settings::new(
        DeviceId::parse(device).unwrap(),
        specs,
        Limits::for_host(4 << 30, 4),
    );
    settings.heartbeat = Duration::from_mins(10);
    settings
}

/// Sleep (paused clock) until `f` holds, at most `limit`.
pub async fn until(limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run `lc` while `driver` runs; stop it when the driver is done.
pub async fn drive<M, R, S, C>(lc: &Lifecycle<M, R, S, C>, driver: impl Future<Output = ()>)
where
    M: MarketplaceApi,
    R: ContainerRuntime,
    S: Storage,
    C: Clock,
{
    let (tx, rx) = oneshot::channel::<()>();
    let run = lc.run(async {
        rx.await.ok();
    });
    let drive = async {
        driver.await;
        tx.send(()).unwrap();
    };
    let (r, ()) = tokio::join!(run, drive);
    r.unwrap();
}
