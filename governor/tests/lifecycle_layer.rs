//! Ready before listed, with the renter container's writable layer on the rental's volume, on a
//! paused clock: the in-memory runtime (which records the layer each container started on) and
//! directory volumes with a `layer` directory each, which a locked volume hides.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2pvps_governor::clock::TokioClock;
use p2pvps_governor::lifecycle::Lifecycle;
use p2pvps_governor::marketplace::FakeMarketplace;
use p2pvps_governor::runtime::FakeRuntime;
use p2pvps_governor::runtime::fake::FakeContainer;
use p2pvps_governor::state::{Phase, State, StateStore};
use p2pvps_governor::storage::{DirStorage, Storage, StorageError};

mod common;
use common::paused::{self, origin, until};

const DEVICE: &str = "5a2608cfd7df9800266a339d";
const IMAGE: &str = "p2pvps/renter:latest";
const MIB: u64 = 1 << 20;

/// Directory volumes with a `layer` directory inside each, which a locked volume hides.
struct Volumes {
    inner: DirStorage,
    root: PathBuf,
    /// The volume the renter holds the key of, while it is locked.
    locked: Arc<Mutex<Option<String>>>,
    runtime: Arc<FakeRuntime>,
    /// The containers the engine had at each wipe.
    containers_at_wipe: Arc<Mutex<Vec<usize>>>,
}

fn layer_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id).join("layer")
}

impl Storage for Volumes {
    async fn prepare(&self, id: &str) -> Result<PathBuf, StorageError> {
        let path = self.inner.prepare(id).await?;
        std::fs::create_dir_all(layer_dir(&self.root, id)).unwrap();
        Ok(path)
    }

    async fn open(&self, id: &str) -> Result<PathBuf, StorageError> {
        self.inner.open(id).await
    }

    async fn wipe(&self, id: &str) -> Result<(), StorageError> {
        self.containers_at_wipe
            .lock()
            .unwrap()
            .push(self.runtime.containers().len());
        self.inner.wipe(id).await
    }

    async fn verify_wiped(&self, id: &str) -> Result<(), StorageError> {
        self.inner.verify_wiped(id).await
    }

    fn describe(&self) -> String {
        "volumes with a layer directory".into()
    }

    fn keeps_layers(&self) -> bool {
        true
    }

    fn layer_root(&self, id: &str) -> Option<PathBuf> {
        let dir = layer_dir(&self.root, id);
        let locked = self.locked.lock().unwrap().as_deref() == Some(id);
        (!locked && dir.is_dir()).then_some(dir)
    }
}

struct World {
    _tmp: tempfile::TempDir,
    state_dir: PathBuf,
    market: Arc<FakeMarketplace>,
    runtime: Arc<FakeRuntime>,
    locked: Arc<Mutex<Option<String>>>,
    containers_at_wipe: Arc<Mutex<Vec<usize>>>,
    clock: TokioClock,
}

type Lc = Lifecycle<Arc<FakeMarketplace>, Arc<FakeRuntime>, Volumes, TokioClock>;

impl World {
    fn new(lease_hours: i64) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let clock = TokioClock::starting_at(origin());
        Self {
            state_dir: tmp.path().join("state"),
            _tmp: tmp,
            market: Arc::new(FakeMarketplace::new(
                clock,
                chrono::Duration::hours(lease_hours),
            )),
            runtime: Arc::new(FakeRuntime::with_images(&[IMAGE])),
            locked: Arc::new(Mutex::new(None)),
            containers_at_wipe: Arc::new(Mutex::new(Vec::new())),
            clock,
        }
    }

    fn storage_root(&self) -> PathBuf {
        self.state_dir.join("storage")
    }

    fn lifecycle(&self) -> Lc {
        let storage = Volumes {
            inner: DirStorage::new(self.storage_root()),
            root: self.storage_root(),
            locked: self.locked.clone(),
            runtime: self.runtime.clone(),
            containers_at_wipe: self.containers_at_wipe.clone(),
        };
        Lifecycle::new(
            self.market.clone(),
            self.runtime.clone(),
            storage,
            self.clock,
            StateStore::new(&self.state_dir),
            paused::settings(DEVICE),
        )
    }

    fn state(&self) -> State {
        StateStore::new(&self.state_dir).load().unwrap().unwrap()
    }

    /// The layer directory of the rental's volume.
    fn layer(&self) -> PathBuf {
        layer_dir(&self.storage_root(), &self.state().volume)
    }

    /// The renter's container (the one the state names).
    fn renter(&self) -> FakeContainer {
        let id = self.state().container.expect("a container in the state");
        self.runtime.containers()[&id].clone()
    }

    /// Run `lc` while `driver` runs; stop it when the driver is done.
    async fn drive(&self, lc: &Lc, driver: impl Future<Output = ()>) {
        paused::drive(lc, driver).await;
    }

    /// Run a governor until it serves a rental, then stop it.
    async fn serve_then_stop(&self) {
        let lc = self.lifecycle();
        self.drive(&lc, async {
            until(Duration::from_secs(5), || {
                self.state().phase == Phase::Serving
            })
            .await;
        })
        .await;
    }

    /// The renter holds the key of the current volume: locked after a reboot.
    fn lock_volume(&self) {
        *self.locked.lock().unwrap() = Some(self.state().volume);
    }

    /// The stand-ins running (any container that is not the state's).
    fn stand_ins(&self) -> Vec<FakeContainer> {
        let own = self.state().container;
        self.runtime
            .containers()
            .into_iter()
            .filter(|(id, _)| Some(id) != own.as_ref())
            .map(|(_, c)| c)
            .collect()
    }

    /// The renter unlocks the volume; returns once their own container runs again.
    async fn unlock_and_await(&self) {
        *self.locked.lock().unwrap() = None;
        until(Duration::from_secs(30), || self.renter().running).await;
    }

    /// A reboot: every container stopped, and the binds of their layers gone with the mounts.
    fn reboot(&self) {
        for id in self.runtime.containers().keys() {
            self.runtime.stop_behind_our_back(id);
        }
    }
}

/// The device is offered only once its container runs on the fresh volume's layer; the login is
/// all that registration adds.
#[tokio::test(start_paused = true)]
async fn everything_is_made_before_registration_which_only_adds_the_login() {
    let w = World::new(24);
    w.market.set_down(true);
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(30), || {
            w.state().phase == Phase::Registering
        })
        .await;
        let ready = w.renter();
        assert!(ready.running, "running before the device is offered");
        assert_eq!(
            ready.started_on,
            Some(w.layer()),
            "its layer is the volume's"
        );
        assert_eq!(ready.layer, Some(w.layer()));
        assert_eq!(ready.login, None, "no login before a renter");
        assert_eq!(w.market.registrations(), 0);
        assert!(w.state().ready_since.is_some());
        let calls_before = w.runtime.calls().len();

        w.market.set_down(false);
        until(Duration::from_mins(2), || w.state().phase == Phase::Serving).await;
        let served = w.renter();
        assert!(served.login.is_some() && served.running);
        assert_eq!(w.runtime.containers().len(), 1, "the same container");
        let after: Vec<String> = w.runtime.calls()[calls_before..]
            .iter()
            .filter(|c| !c.starts_with("state ") && !c.starts_with("address "))
            .cloned()
            .collect();
        assert!(
            after
                .iter()
                .all(|c| !c.starts_with("create") && !c.starts_with("ensure_image")),
            "made after the registration: {after:?}"
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_container_is_gone_before_the_wipe_and_the_next_one_is_ready_on_a_fresh_volume() {
    let w = World::new(2);
    let lc = w.lifecycle();
    let mut first = None;
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
        first = Some((w.state().volume, w.state().container.unwrap(), w.layer()));
        tokio::time::sleep(Duration::from_hours(2)).await;
        until(Duration::from_secs(30), || {
            w.state().phase == Phase::Serving && w.state().rentals_completed == 1
        })
        .await;
    })
    .await;
    let (old_volume, old_id, old_layer) = first.unwrap();
    assert_ne!(w.state().volume, old_volume);
    assert_eq!(
        *w.containers_at_wipe.lock().unwrap(),
        [0],
        "the renter's container was removed before the wipe"
    );
    assert!(!w.runtime.containers().contains_key(&old_id));
    let now = w.renter();
    assert_ne!(w.layer(), old_layer);
    assert!(now.running && now.image == IMAGE && now.login.is_some());
    assert_eq!(now.started_on, Some(w.layer()));
}

/// A reboot while listed: the volume opens and the same container runs on its layer again before
/// the device registers.
#[tokio::test(start_paused = true)]
async fn after_a_reboot_while_listed_the_container_is_back_before_registering() {
    let w = World::new(24);
    w.market.set_down(true);
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(30), || {
            w.state().phase == Phase::Registering
        })
        .await;
    })
    .await;
    let id = w.state().container.unwrap();
    w.reboot();
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(30), || w.renter().running).await;
        assert_eq!(
            w.market.registrations(),
            0,
            "registered before the container ran"
        );
    })
    .await;
    assert_eq!(w.state().container, Some(id), "the same container");
    assert_eq!(w.renter().started_on, Some(w.layer()));
}

#[tokio::test(start_paused = true)]
async fn after_a_reboot_while_serving_the_same_container_starts_on_its_layer() {
    let w = World::new(24);
    w.serve_then_stop().await;
    let id = w.state().container.unwrap();
    w.reboot();
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(30), || w.renter().running).await;
    })
    .await;
    assert_eq!(w.state().container, Some(id), "the same container");
    let c = w.renter();
    assert_eq!(c.started_on, Some(w.layer()));
    assert!(c.login.is_some());
    assert_eq!(w.runtime.containers().len(), 1);
}

/// A reboot between the registration and the login: the container made before gets the login.
#[tokio::test(start_paused = true)]
async fn a_login_interrupted_by_a_reboot_is_made_in_the_same_container() {
    let w = World::new(24);
    w.serve_then_stop().await;
    let id = w.state().container.unwrap();
    let mut state = w.state();
    state.phase = Phase::Provisioning;
    StateStore::new(&w.state_dir).save(&state).unwrap();
    w.reboot();
    w.serve_then_stop().await;
    assert_eq!(w.state().container, Some(id));
    let c = w.renter();
    assert!(c.running && c.login.is_some());
    assert_eq!(c.started_on, Some(w.layer()));
}

/// The renter holds the key and the device rebooted: their container cannot start (its layer is on
/// the locked volume), so a stand-in on the engine's own root gives them a login to unlock; then
/// the stand-in goes and their own container starts on its layer.
#[tokio::test(start_paused = true)]
async fn a_locked_volume_gets_a_stand_in_until_the_renter_unlocks() {
    let w = World::new(24);
    w.serve_then_stop().await;
    let id = w.state().container.unwrap();
    w.reboot();
    w.lock_volume();
    let lc = w.lifecycle();
    let check_ins_before = w.market.checkins();
    w.drive(&lc, async {
        until(Duration::from_secs(10), || {
            w.stand_ins().iter().any(|c| c.running)
        })
        .await;
        let standins = w.stand_ins();
        assert_eq!(standins.len(), 1);
        assert!(
            standins[0].login.is_some(),
            "the renter can log in to unlock"
        );
        assert_eq!(standins[0].started_on, None, "on the engine's own root");
        assert_eq!(
            w.state().container.as_ref(),
            Some(&id),
            "the state keeps the real one"
        );
        assert!(!w.renter().running, "started without its layer");
        // Check-ins go on while locked.
        tokio::time::sleep(Duration::from_mins(25)).await;
        assert!(w.market.checkins() >= check_ins_before + 3);
        w.unlock_and_await().await;
    })
    .await;
    assert!(w.stand_ins().is_empty(), "the stand-in is gone");
    assert_eq!(w.renter().started_on, Some(w.layer()));
    assert_eq!(w.state().phase, Phase::Serving);
}

/// The stand-in writes to the state partition: past half of what was free when it started, it is
/// replaced at once by a fresh one with the renter's login; the unlock still brings the renter's own
/// container back.
#[tokio::test(start_paused = true)]
async fn a_stand_in_that_fills_the_state_partition_is_replaced() {
    let w = World::new(24);
    w.serve_then_stop().await;
    w.reboot();
    w.lock_volume();
    w.runtime.set_root_free(800 * MIB);
    let running = || {
        let all = w.stand_ins();
        assert!(all.len() <= 1, "one stand-in at a time: {all:?}");
        all.into_iter()
            .find(|c| c.running && c.login.is_some())
            .map(|c| c.name)
    };
    let ids = || -> Vec<String> {
        let own = w.state().container;
        w.runtime
            .containers()
            .into_keys()
            .filter(|id| Some(id) != own.as_ref())
            .collect()
    };
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(10), || running().is_some()).await;
        let first = ids();
        // 300 MiB written: within its share.
        w.runtime.set_root_free(500 * MIB);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ids(), first, "within its share, kept");
        // 100 MiB more than half of what was free.
        w.runtime.set_root_free(300 * MIB);
        until(Duration::from_secs(2), || {
            running().is_some() && ids() != first
        })
        .await;
        // Its layer went with it.
        w.runtime.set_root_free(800 * MIB);
        let second = ids();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(ids(), second, "the fresh one stays");
        w.unlock_and_await().await;
    })
    .await;
    assert!(w.stand_ins().is_empty(), "the stand-in is gone");
}

#[tokio::test(start_paused = true)]
async fn a_rental_that_expires_while_locked_is_wiped() {
    let w = World::new(1);
    w.serve_then_stop().await;
    w.reboot();
    w.lock_volume();
    let lc = w.lifecycle();
    w.drive(&lc, async {
        tokio::time::sleep(Duration::from_mins(61)).await;
        until(Duration::from_secs(30), || w.state().rentals_completed == 1).await;
    })
    .await;
    assert_eq!(
        *w.containers_at_wipe.lock().unwrap(),
        [0],
        "the stand-in and the renter's container were gone before the wipe"
    );
}
