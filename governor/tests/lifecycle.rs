//! Every lifecycle transition on a paused clock, with the in-memory marketplace and runtime and the
//! real directory storage in a temp dir.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2pvps_governor::clock::{Clock as _, TokioClock};
use p2pvps_governor::lifecycle::{Lifecycle, Settings};
use p2pvps_governor::marketplace::FakeMarketplace;
use p2pvps_governor::runtime::FakeRuntime;
use p2pvps_governor::runtime::fake::FakeContainer;
use p2pvps_governor::socket::{Hub, TunnelEndpoint};
use p2pvps_governor::state::{Phase, State, StateStore};
use p2pvps_governor::storage::{DirStorage, Storage, StorageError};
use p2pvps_governor::types::DeviceId;

mod common;
use common::paused::{self, origin, until};

const DEVICE: &str = "5a2608cfd7df9800266a339d";
const IMAGE: &str = "p2pvps/renter:latest";
const HOUR: i64 = 3600;

struct World {
    _tmp: tempfile::TempDir,
    state_dir: PathBuf,
    market: Arc<FakeMarketplace>,
    runtime: Arc<FakeRuntime>,
    clock: TokioClock,
}

type Lc = Lifecycle<Arc<FakeMarketplace>, Arc<FakeRuntime>, DirStorage, TokioClock>;

impl World {
    fn new(lease_hours: i64) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let clock = TokioClock::starting_at(origin());
        Self {
            state_dir: tmp.path().join("state"),
            _tmp: tmp,
            market: Arc::new(FakeMarketplace::new(
                clock,
                chrono::Duration::seconds(lease_hours * HOUR),
            )),
            runtime: Arc::new(FakeRuntime::with_images(&[IMAGE])),
            clock,
        }
    }

    fn storage_root(&self) -> PathBuf {
        self.state_dir.join("storage")
    }

    fn lifecycle(&self) -> Lc {
        self.lifecycle_for(DEVICE)
    }

    fn lifecycle_with(&self, f: impl FnOnce(&mut Settings)) -> Lc {
        self.build(DEVICE, f)
    }

    fn lifecycle_for(&self, device: &str) -> Lc {
        self.build(device, |_| {})
    }

    fn build(&self, device: &str, f: impl FnOnce(&mut Settings)) -> Lc {
        self.build_with(device, f, DirStorage::new(self.storage_root()))
    }

    fn build_with<S: Storage>(
        &self,
        device: &str,
        f: impl FnOnce(&mut Settings),
        storage: S,
    ) -> Lifecycle<Arc<FakeMarketplace>, Arc<FakeRuntime>, S, TokioClock> {
        let mut settings = paused::settings(device);
        f(&mut settings);
        Lifecycle::new(
            self.market.clone(),
            self.runtime.clone(),
            storage,
            self.clock,
            StateStore::new(&self.state_dir),
            settings,
        )
    }

    fn state(&self) -> State {
        StateStore::new(&self.state_dir).load().unwrap().unwrap()
    }

    fn running(&self) -> Vec<(String, FakeContainer)> {
        self.runtime
            .containers()
            .into_iter()
            .filter(|(_, c)| c.running)
            .collect()
    }

    /// Run a governor until it serves a rental, then stop it; returns the rental's storage path.
    async fn serve_then_stop(&self) -> PathBuf {
        let lc = self.lifecycle();
        self.drive(&lc, async {
            until(Duration::from_secs(5), || {
                self.state().phase == Phase::Serving
            })
            .await;
        })
        .await;
        let containers = self.runtime.containers();
        containers.values().next().unwrap().storage.clone()
    }

    /// Run `lc` while `driver` runs; stop it when the driver is done.
    async fn drive<S: Storage>(
        &self,
        lc: &Lifecycle<Arc<FakeMarketplace>, Arc<FakeRuntime>, S, TokioClock>,
        driver: impl Future<Output = ()>,
    ) {
        paused::drive(lc, driver).await;
    }
}

#[tokio::test(start_paused = true)]
async fn full_cycle_registers_serves_expires_wipes_and_registers_again() {
    let w = World::new(24);
    let lc = w.lifecycle();
    let mut phases = lc.subscribe();
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
        assert_eq!(w.market.registrations(), 1);
        assert_eq!(w.market.last_specs().unwrap().processor, "Cortex-A72 x4");
        let s = w.state();
        let lease = s.lease.clone().unwrap();
        assert_eq!(lease.username.as_str(), "renter1");
        assert_eq!(lease.port.get(), 6001);
        assert!(
            !std::fs::read_to_string(w.state_dir.join("state.json"))
                .unwrap()
                .contains("Pass000001")
        );
        let running = w.running();
        assert_eq!(running.len(), 1);
        let (id, c) = &running[0];
        let id = id.as_str();
        assert_eq!(Some(id), s.container.as_deref());
        assert_eq!(c.device, DEVICE);
        assert_eq!(c.login.as_ref().unwrap().0, "renter1");
        assert!(c.login.as_ref().unwrap().1.starts_with("$6$"));
        let storage = c.storage.clone();
        assert!(storage.starts_with(w.storage_root()) && storage.is_dir());
        std::fs::write(storage.join("canary"), "renter data").unwrap();

        // Heartbeats every 10 minutes while serving.
        tokio::time::sleep(Duration::from_secs(3 * 600 + 5)).await;
        assert!(w.market.checkins() >= 3, "checkins {}", w.market.checkins());
        assert!(w.state().last_heartbeat.unwrap().error.is_none());

        // The container is gone at the expiration instant, not at the next heartbeat.
        let expiration = lease.expiration;
        w.clock
            .sleep_until(expiration - chrono::Duration::seconds(1))
            .await;
        assert_eq!(w.running().len(), 1, "still serving a second before expiry");
        // The next rental may start within the same instant: watch for this container, not for none.
        until(Duration::from_secs(2), || {
            !w.runtime.containers().contains_key(id)
        })
        .await;
        assert!(w.clock.now() - expiration <= chrono::Duration::seconds(1));
        until(Duration::from_secs(5), || w.market.registrations() == 2).await;
        assert!(!storage.exists(), "the old storage survived the wipe");
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
        let s = w.state();
        assert_eq!(s.lease.unwrap().username.as_str(), "renter2");
        assert_eq!(s.rentals_completed, 1);
        assert_eq!(w.running()[0].1.login.as_ref().unwrap().0, "renter2");
        assert_ne!(w.running()[0].1.storage, storage);
        assert_eq!(*phases.borrow_and_update(), Phase::Serving);
    })
    .await;
    // Stopping the governor leaves the renter's container running.
    assert_eq!(w.running().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_tunnel_logs_in_while_listed_and_forwards_only_while_a_rental_runs() {
    let w = World::new(1);
    let hub = Hub::default();
    let endpoint = TunnelEndpoint {
        server: "tunnel.example".into(),
        server_port: 6100,
        user: "sshuser".into(),
        password: None,
        private_key: None,
        host_key: None,
    };
    let lc = w
        .lifecycle_with(|s| s.tunnel = Some(endpoint.clone()))
        .with_hub(hub.clone());
    assert!(hub.tunnel().is_none());
    // The marketplace is down: the device waits to be listed, its keeper logged in, no port.
    w.market.set_down(true);
    w.drive(&lc, async {
        until(Duration::from_secs(5), || {
            w.state().phase == Phase::Registering && hub.tunnel().is_some()
        })
        .await;
        let listed = hub.tunnel().unwrap();
        assert_eq!(listed.remote_port, None, "no port before a rental");
        w.market.set_down(false);
        until(Duration::from_mins(1), || w.state().phase == Phase::Serving).await;
        let t = hub.tunnel().expect("tunnel settings while serving");
        assert_eq!(t.remote_port, Some(w.state().lease.unwrap().port.get()));
        assert!(
            t.adds_port_to(&listed),
            "the keeper that logged in is given the port, not replaced"
        );
        assert_eq!(t.endpoint.server, "tunnel.example");
        let first_port = t.remote_port;
        // The renter's notices: the lease's end and the default reminders.
        let l = hub.lease().expect("the lease's end while serving");
        assert_eq!(l.expiration, w.state().lease.unwrap().expiration);
        assert_eq!(l.notices, p2pvps_governor::lifecycle::DEFAULT_NOTICES);
        // The marketplace moves the end: the connector learns it at the next heartbeat.
        let moved = l.expiration - chrono::Duration::minutes(30);
        w.market.set_expiration(moved);
        until(Duration::from_secs(700), || {
            hub.lease().is_some_and(|l| l.expiration == moved)
        })
        .await;
        // After the expiration the next rental's port replaces it; between the two, none.
        until(Duration::from_secs(3700), || w.market.registrations() == 2).await;
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
        assert_ne!(hub.tunnel().unwrap().remote_port, first_port);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_outage_never_ends_a_rental_early_and_expiry_still_holds() {
    let w = World::new(2);
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
        let expiration = w.state().lease.unwrap().expiration;
        w.market.set_down(true);
        w.clock
            .sleep_until(expiration - chrono::Duration::seconds(5))
            .await;
        assert_eq!(w.running().len(), 1, "an outage ended the rental early");
        let hb = w.state().last_heartbeat.unwrap();
        assert!(hb.error.unwrap().contains("503"));
        // Expiry is enforced while the server is still down…
        let renter = w.state().container.unwrap();
        until(Duration::from_secs(10), || {
            !w.runtime.containers().contains_key(&renter)
        })
        .await;
        // …and no new registration happens until it comes back.
        until(Duration::from_mins(1), || {
            w.state().phase == Phase::Registering
        })
        .await;
        tokio::time::sleep(Duration::from_mins(10)).await;
        assert_eq!(w.market.registrations(), 1);
        w.market.set_down(false);
        until(Duration::from_secs(400), || w.market.registrations() == 2).await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_server_can_extend_or_cut_short_a_rental() {
    let w = World::new(1);
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
        let first = w.state().lease.unwrap().expiration;
        let container = w.state().container.unwrap();
        let extended = first + chrono::Duration::seconds(2 * HOUR);
        w.market.set_expiration(extended);
        w.clock
            .sleep_until(first + chrono::Duration::seconds(60))
            .await;
        assert_eq!(
            w.running().len(),
            1,
            "an extended rental ended at its old time"
        );
        assert_eq!(w.state().lease.unwrap().expiration, extended);
        // An expiration in the past ends the rental at the next heartbeat.
        w.market
            .set_expiration(w.clock.now() - chrono::Duration::seconds(1));
        let asked = w.clock.now();
        until(Duration::from_secs(700), || {
            !w.runtime.containers().contains_key(&container)
        })
        .await;
        assert!(w.clock.now() - asked <= chrono::Duration::seconds(601));
        until(Duration::from_secs(5), || w.market.registrations() == 2).await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_resumes_a_live_rental_with_its_container() {
    let w = World::new(24);
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
    })
    .await;
    let before = w.state();
    let lc = w.lifecycle();
    w.drive(&lc, async {
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let after = w.state();
    assert_eq!(
        w.market.registrations(),
        1,
        "a restart must not re-register a live rental"
    );
    assert_eq!(after.container, before.container);
    assert_eq!(after.phase, Phase::Serving);
    assert_eq!(w.runtime.containers().len(), 1);
    // The resumed governor checked in at once.
    assert!(after.last_heartbeat.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_restart_after_the_expiration_ends_the_rental_first() {
    let w = World::new(1);
    let storage = w.serve_then_stop().await;
    // The governor was down across the expiration (power cut).
    tokio::time::sleep(Duration::from_hours(2)).await;
    assert_eq!(w.runtime.containers().len(), 1);
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.market.registrations() == 2).await;
        assert!(!storage.exists());
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
    })
    .await;
    let containers = w.runtime.containers();
    assert_eq!(containers.len(), 1);
    assert_eq!(
        containers
            .values()
            .next()
            .unwrap()
            .login
            .as_ref()
            .unwrap()
            .0,
        "renter2"
    );
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_wipe_finishes_before_any_registration() {
    let w = World::new(24);
    let mut state = State::new(DeviceId::parse(DEVICE).unwrap());
    state.phase = Phase::Wiping;
    let leftover = w.storage_root().join(&state.volume);
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("canary"), "previous renter").unwrap();
    StateStore::new(&w.state_dir).save(&state).unwrap();
    let lc = w.lifecycle();
    let mut phases = lc.subscribe();
    w.drive(&lc, async {
        // The first phase published is the wipe; registration comes only after the volume is gone.
        phases.changed().await.ok();
        until(Duration::from_secs(5), || w.market.registrations() == 1).await;
        assert!(!leftover.exists(), "registered before the wipe finished");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn containers_the_state_does_not_own_are_removed_at_start() {
    let w = World::new(24);
    let orphan = |device: &str| FakeContainer {
        name: format!("orphan-{device}"),
        device: device.into(),
        image: IMAGE.into(),
        storage: "/nonexistent".into(),
        running: true,
        login: None,
        layer: None,
        started_on: None,
    };
    w.runtime.insert("orphan", orphan(DEVICE));
    w.runtime
        .insert("other-device", orphan("000000000000000000000000"));
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
    })
    .await;
    let containers = w.runtime.containers();
    assert!(!containers.contains_key("orphan"));
    assert!(
        containers.contains_key("other-device"),
        "another device's container was touched"
    );
    assert_eq!(containers.len(), 2);
}

/// The directory backend, noting at each `open` whether a renter container was running then.
struct Watched {
    inner: DirStorage,
    runtime: Arc<FakeRuntime>,
    opens: Arc<Mutex<Vec<bool>>>,
}

impl Storage for Watched {
    async fn prepare(&self, id: &str) -> Result<PathBuf, StorageError> {
        self.inner.prepare(id).await
    }

    async fn open(&self, id: &str) -> Result<PathBuf, StorageError> {
        let running = self.runtime.containers().values().any(|c| c.running);
        self.opens.lock().unwrap().push(running);
        self.inner.open(id).await
    }

    async fn wipe(&self, id: &str) -> Result<(), StorageError> {
        self.inner.wipe(id).await
    }

    async fn verify_wiped(&self, id: &str) -> Result<(), StorageError> {
        self.inner.verify_wiped(id).await
    }

    fn describe(&self) -> String {
        "watched".into()
    }
}

/// After a reboot the engine leaves the container stopped and the drive unmounted: the volume is
/// opened (mounted) before the container is started again, or its bind would show the bare mount
/// point and the renter's writes would land on the state partition.
#[tokio::test(start_paused = true)]
async fn after_a_reboot_the_storage_is_opened_before_the_container_starts() {
    let w = World::new(24);
    w.serve_then_stop().await;
    let id = w.state().container.unwrap();
    w.runtime.stop_behind_our_back(&id);
    let opens = Arc::new(Mutex::new(Vec::new()));
    let storage = Watched {
        inner: DirStorage::new(w.storage_root()),
        runtime: w.runtime.clone(),
        opens: opens.clone(),
    };
    let lc = w.build_with(DEVICE, |_| {}, storage);
    w.drive(&lc, async {
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    assert_eq!(
        *opens.lock().unwrap(),
        [false],
        "opened once, container stopped"
    );
    assert!(
        w.runtime.containers()[&id].running,
        "the container was started again"
    );
    assert_eq!(w.state().phase, Phase::Serving);
}

#[tokio::test(start_paused = true)]
async fn a_lost_container_is_recreated_and_a_stopped_one_restarted() {
    let w = World::new(24);
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
        let first = w.state().container.unwrap();
        w.runtime.stop_behind_our_back(&first);
        tokio::time::sleep(Duration::from_secs(601)).await;
        assert!(
            w.runtime.containers()[&first].running,
            "a stopped container was not restarted"
        );
        w.runtime.lose(&first);
        until(Duration::from_secs(700), || {
            w.state().container.is_some_and(|c| c != first) && w.state().phase == Phase::Serving
        })
        .await;
        let c = w.running();
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].1.login.as_ref().unwrap().0,
            "renter1",
            "the login survives without the password"
        );
        assert_eq!(w.market.registrations(), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn engine_failures_are_retried() {
    let w = World::new(24);
    w.runtime.fail_next(4);
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_mins(1), || w.state().phase == Phase::Serving).await;
    })
    .await;
    assert_eq!(w.runtime.containers().len(), 1);
    assert!(w.runtime.calls().len() > 4);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_device_keeps_trying_with_its_container_waiting_without_a_login() {
    let w = World::new(24);
    w.market.set_unknown_device(true);
    let lc = w.lifecycle();
    w.drive(&lc, async {
        tokio::time::sleep(Duration::from_mins(30)).await;
        assert_eq!(w.state().phase, Phase::Registering);
        let waiting = w.runtime.containers();
        assert!(
            waiting.len() == 1 && waiting.values().all(|c| c.running && c.login.is_none()),
            "containers: {waiting:?}"
        );
        w.market.set_unknown_device(false);
        until(Duration::from_secs(400), || {
            w.state().phase == Phase::Serving
        })
        .await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_new_device_id_ends_the_old_rental_before_registering() {
    let w = World::new(24);
    let old = w.serve_then_stop().await;
    let other = "0123456789abcdef01234567";
    let lc = w.lifecycle_for(other);
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.market.registrations() == 2).await;
        assert!(
            !old.exists(),
            "the old renter's data survived a device change"
        );
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
    })
    .await;
    assert_eq!(w.state().device_id.as_str(), other);
    let c = w.runtime.containers();
    assert_eq!(c.len(), 1);
    assert_eq!(c.values().next().unwrap().device, other);
}

#[tokio::test(start_paused = true)]
async fn a_device_that_cannot_make_the_container_is_never_offered() {
    let w = World::new(1);
    // No image and no tarball: the preparation retries, and the device stays off the market.
    let w = World {
        runtime: Arc::new(FakeRuntime::new()),
        ..w
    };
    let lc = w.lifecycle();
    w.drive(&lc, async {
        tokio::time::sleep(Duration::from_hours(1)).await;
        assert_eq!(w.state().phase, Phase::PreparingStorage);
        assert_eq!(w.market.registrations(), 0);
        assert!(w.runtime.containers().is_empty());
    })
    .await;
}

/// The renter's network and its rules come before the container, and again before a container
/// that stopped behind the governor's back is started; the bridge is kept for `status`.
#[tokio::test(start_paused = true)]
async fn the_network_rules_are_in_place_before_any_renter_container_starts() {
    let w = World::new(24);
    let firewall = Arc::new(p2pvps_governor::sandbox::FakeFirewall::default());
    let lc = w
        .lifecycle_with(|s| {
            s.sandbox.smtp = true;
        })
        .with_firewall(firewall.clone());
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
        let calls = w.runtime.calls();
        let pos = |prefix: &str| calls.iter().position(|c| c.starts_with(prefix));
        let (network, create) = (
            pos("ensure_network p2pvps").unwrap(),
            pos("create ").unwrap(),
        );
        assert!(network < create, "{calls:?}");
        // Made when the container is created, checked again as serving starts (after a reboot
        // the kernel has none).
        let applied = firewall.applied.lock().unwrap().clone();
        assert_ne!(applied.len(), 0, "no renter network rules were applied");
        assert!(applied.iter().all(|r| r.bridge == "p2pvps0"), "{applied:?}");
        assert!(
            applied[0].policy.smtp,
            "the owner's policy reaches the rules"
        );
        assert_eq!(w.state().network_rules.as_deref(), Some("p2pvps0"));

        // Once serving has checked in, its start is done: a restart is what adds the next.
        until(Duration::from_secs(5), || {
            w.state().last_heartbeat.is_some()
        })
        .await;
        let before = firewall.applied.lock().unwrap().len();
        let id = w.running()[0].0.clone();
        w.runtime.stop_behind_our_back(&id);
        until(Duration::from_secs(700), || !w.running().is_empty()).await;
        assert_eq!(
            firewall.applied.lock().unwrap().len(),
            before + 1,
            "rules again before the restart"
        );
    })
    .await;
}

/// Records, each time it runs, the registrations so far, the saved phase and how many renter
/// volumes exist. It looks at the world (leaked: `BetweenRentals` is held as an `Arc<dyn …>`).
struct Gate {
    world: &'static World,
    seen: Mutex<Vec<(u32, Phase, usize)>>,
}

impl p2pvps_governor::lifecycle::BetweenRentals for Gate {
    fn run(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let w = self.world;
        let volumes = std::fs::read_dir(w.storage_root()).map_or(0, Iterator::count);
        self.seen
            .lock()
            .unwrap()
            .push((w.market.registrations(), w.state().phase, volumes));
        Box::pin(async {})
    }
}

#[tokio::test(start_paused = true)]
async fn updates_get_their_turn_only_between_rentals() {
    let w: &'static World = Box::leak(Box::new(World::new(1)));
    let gate = Arc::new(Gate {
        world: w,
        seen: Mutex::new(Vec::new()),
    });
    let lc = w.lifecycle().with_between_rentals(Some(gate.clone()));
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.market.registrations() == 1).await;
        // Serving for most of the hour: the gate is not asked while a renter is served.
        tokio::time::sleep(Duration::from_mins(50)).await;
        assert_eq!(gate.seen.lock().unwrap().len(), 1);
        until(Duration::from_mins(15), || w.market.registrations() == 2).await;
    })
    .await;
    let seen = gate.seen.lock().unwrap().clone();
    // Once before each registration, in the Registering phase, and the second time only after the
    // first renter's storage was wiped (one volume: the next renter's, prepared).
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, 0);
    assert_eq!(seen[1].0, 1);
    assert!(seen.iter().all(|s| s.1 == Phase::Registering), "{seen:?}");
    assert_eq!(seen[1].2, 1, "{seen:?}");
}
