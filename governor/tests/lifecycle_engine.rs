//! The container engine's data root following the rental's volume, on a paused clock: a recording
//! engine, one in-memory runtime per data root (a container lives in the root it was made in), and
//! the directory storage with an engine directory per volume and a lock the test turns.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2pvps_governor::clock::TokioClock;
use p2pvps_governor::engine::{Engine as _, FakeEngine};
use p2pvps_governor::lifecycle::Lifecycle;
use p2pvps_governor::marketplace::FakeMarketplace;
use p2pvps_governor::runtime::{ContainerRuntime, ContainerSpec, FakeRuntime, RuntimeError};
use p2pvps_governor::state::{Phase, State, StateStore};
use p2pvps_governor::storage::{DirStorage, Storage, StorageError};
use p2pvps_governor::types::{PasswordHash, Username};

mod common;
use common::paused::{self, origin, until};

const DEVICE: &str = "5a2608cfd7df9800266a339d";
const IMAGE: &str = "p2pvps/renter:latest";

/// Containers per data root (None: the fallback), on whichever root the engine is on now.
struct Roots {
    engine: Arc<FakeEngine>,
    roots: Mutex<BTreeMap<Option<PathBuf>, Arc<FakeRuntime>>>,
}

impl Roots {
    fn at(&self, root: Option<&Path>) -> Arc<FakeRuntime> {
        let mut roots = self.roots.lock().unwrap();
        roots
            .entry(root.map(Path::to_owned))
            .or_insert_with(|| Arc::new(FakeRuntime::new()))
            .clone()
    }

    fn now(&self) -> Arc<FakeRuntime> {
        self.at(self.engine.root().as_deref())
    }
}

impl ContainerRuntime for Roots {
    fn address(
        &self,
        id: &str,
        network: &str,
    ) -> impl Future<Output = Result<Option<std::net::IpAddr>, RuntimeError>> + Send {
        let rt = self.now();
        let (id, network) = (id.to_owned(), network.to_owned());
        async move { rt.address(&id, &network).await }
    }
    fn ensure_network(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send {
        let rt = self.now();
        let name = name.to_owned();
        async move { rt.ensure_network(&name).await }
    }
    fn ensure_image(
        &self,
        image: &str,
        _tar: Option<&Path>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        // Every root imports the image afresh (the fake takes any tarball).
        let rt = self.now();
        let image = image.to_owned();
        async move {
            rt.ensure_image(&image, Some(Path::new("renter-image.tar")))
                .await
        }
    }
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send {
        let rt = self.now();
        let spec = spec.clone();
        async move { rt.create(&spec).await }
    }
    fn add_login(
        &self,
        id: &str,
        user: &Username,
        hash: &PasswordHash,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let rt = self.now();
        let (id, user, hash) = (id.to_owned(), user.clone(), hash.clone());
        async move { rt.add_login(&id, &user, &hash).await }
    }
    fn state(&self, id: &str) -> impl Future<Output = Result<Option<bool>, RuntimeError>> + Send {
        let rt = self.now();
        let id = id.to_owned();
        async move { rt.state(&id).await }
    }
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let rt = self.now();
        let id = id.to_owned();
        async move { rt.start(&id).await }
    }
    fn remove(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send {
        let rt = self.now();
        let id = id.to_owned();
        async move { rt.remove(&id, grace).await }
    }
    fn list(&self, device: &str) -> impl Future<Output = Result<Vec<String>, RuntimeError>> + Send {
        let rt = self.now();
        let device = device.to_owned();
        async move { rt.list(&device).await }
    }
}

/// Directory volumes with an `engine` directory beside each, which a locked volume hides.
struct Volumes {
    inner: DirStorage,
    root: PathBuf,
    /// The volume the renter holds the key of, while it is locked.
    locked: Arc<Mutex<Option<String>>>,
    engine: Arc<FakeEngine>,
    /// Where the engine's root was at each wipe.
    wiped_with_engine_on: Arc<Mutex<Vec<Option<PathBuf>>>>,
}

impl Volumes {
    fn engine_dir(root: &Path, id: &str) -> PathBuf {
        root.join(format!("{id}.engine"))
    }
}

impl Storage for Volumes {
    async fn prepare(&self, id: &str) -> Result<PathBuf, StorageError> {
        std::fs::create_dir_all(Self::engine_dir(&self.root, id)).unwrap();
        self.inner.prepare(id).await
    }

    async fn open(&self, id: &str) -> Result<PathBuf, StorageError> {
        self.inner.open(id).await
    }

    async fn wipe(&self, id: &str) -> Result<(), StorageError> {
        self.wiped_with_engine_on
            .lock()
            .unwrap()
            .push(self.engine.root());
        std::fs::remove_dir_all(Self::engine_dir(&self.root, id)).ok();
        self.inner.wipe(id).await
    }

    async fn verify_wiped(&self, id: &str) -> Result<(), StorageError> {
        self.inner.verify_wiped(id).await
    }

    fn describe(&self) -> String {
        "volumes with an engine directory".into()
    }

    fn engine_root(&self, id: &str) -> Option<PathBuf> {
        let dir = Self::engine_dir(&self.root, id);
        let locked = self.locked.lock().unwrap().as_deref() == Some(id);
        (!locked && dir.is_dir()).then_some(dir)
    }
}

struct World {
    _tmp: tempfile::TempDir,
    state_dir: PathBuf,
    market: Arc<FakeMarketplace>,
    engine: Arc<FakeEngine>,
    roots: Arc<Roots>,
    locked: Arc<Mutex<Option<String>>>,
    wiped_with_engine_on: Arc<Mutex<Vec<Option<PathBuf>>>>,
    clock: TokioClock,
}

type Lc = Lifecycle<Arc<FakeMarketplace>, Arc<Roots>, Volumes, TokioClock>;

impl World {
    fn new(lease_hours: i64) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let clock = TokioClock::starting_at(origin());
        let engine = Arc::new(FakeEngine::default());
        Self {
            state_dir: tmp.path().join("state"),
            _tmp: tmp,
            market: Arc::new(FakeMarketplace::new(
                clock,
                chrono::Duration::hours(lease_hours),
            )),
            roots: Arc::new(Roots {
                engine: engine.clone(),
                roots: Mutex::new(BTreeMap::new()),
            }),
            engine,
            locked: Arc::new(Mutex::new(None)),
            wiped_with_engine_on: Arc::new(Mutex::new(Vec::new())),
            clock,
        }
    }

    fn storage_root(&self) -> PathBuf {
        self.state_dir.join("storage")
    }

    fn lifecycle(&self) -> Lc {
        let settings = paused::settings(DEVICE);
        let storage = Volumes {
            inner: DirStorage::new(self.storage_root()),
            root: self.storage_root(),
            locked: self.locked.clone(),
            engine: self.engine.clone(),
            wiped_with_engine_on: self.wiped_with_engine_on.clone(),
        };
        Lifecycle::new(
            self.market.clone(),
            self.roots.clone(),
            storage,
            self.clock,
            StateStore::new(&self.state_dir),
            settings,
        )
        .with_engine(self.engine.clone())
    }

    fn state(&self) -> State {
        StateStore::new(&self.state_dir).load().unwrap().unwrap()
    }

    /// The engine root of the rental's volume, as the fake engine records it.
    #[expect(
        clippy::unnecessary_wraps,
        reason = "compared with the fake engine's roots, where None is the fallback"
    )]
    fn volume_root(&self) -> Option<PathBuf> {
        Some(Volumes::engine_dir(
            &self.storage_root(),
            &self.state().volume,
        ))
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

    /// The renter unlocks the volume; returns once their container `id` runs again in `root`.
    async fn unlock_and_await(&self, id: &str, root: Option<&Path>) {
        *self.locked.lock().unwrap() = None;
        until(Duration::from_secs(30), || {
            self.roots
                .at(root)
                .containers()
                .get(id)
                .is_some_and(|c| c.running)
        })
        .await;
    }

    /// A reboot: the engine comes up on the fallback root and every container is stopped.
    async fn reboot(&self) {
        self.engine.detach().await.unwrap();
        for rt in self.roots.roots.lock().unwrap().values() {
            for id in rt.containers().keys() {
                rt.stop_behind_our_back(id);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_renter_container_lives_on_the_volume_and_the_engine_leaves_it_before_the_wipe() {
    let w = World::new(2);
    let lc = w.lifecycle();
    let mut first = None;
    w.drive(&lc, async {
        until(Duration::from_secs(5), || w.state().phase == Phase::Serving).await;
        let root = w.volume_root();
        first = Some((root.clone(), w.state().volume));
        assert_eq!(w.engine.root(), root, "engine on the rental's volume");
        let on_volume = w.roots.at(root.as_deref()).containers();
        let id = w.state().container.unwrap();
        assert!(
            on_volume[&id].running,
            "the renter's container is in the volume's root"
        );
        assert!(
            w.roots.at(None).containers().is_empty(),
            "nothing in the fallback root"
        );
        // The lease ends; the next rental gets a fresh volume and root.
        tokio::time::sleep(Duration::from_hours(2)).await;
        until(Duration::from_secs(30), || {
            w.state().phase == Phase::Serving && w.state().rentals_completed == 1
        })
        .await;
    })
    .await;
    let (old_root, old_volume) = first.unwrap();
    assert_ne!(w.state().volume, old_volume);
    assert_eq!(
        *w.wiped_with_engine_on.lock().unwrap(),
        [None],
        "the engine was off the volume when it was wiped"
    );
    assert_eq!(
        w.engine.restarts(),
        [old_root, None, w.volume_root()],
        "volume, fallback for the wipe, the next volume"
    );
    let now = w.roots.at(w.volume_root().as_deref()).containers();
    assert_eq!(now.len(), 1);
    assert!(now.values().all(|c| c.running && c.image == IMAGE));
}

#[tokio::test(start_paused = true)]
async fn after_a_reboot_the_engine_returns_to_the_volume_and_restarts_the_same_container() {
    let w = World::new(24);
    w.serve_then_stop().await;
    let id = w.state().container.unwrap();
    w.reboot().await;
    let lc = w.lifecycle();
    w.drive(&lc, async {
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    assert_eq!(w.engine.root(), w.volume_root());
    assert_eq!(
        w.state().container.as_ref(),
        Some(&id),
        "the same container"
    );
    assert!(w.roots.at(w.volume_root().as_deref()).containers()[&id].running);
}

/// A reboot while the container was being made (its id saved, the login not yet): after the engine
/// is back on the volume, that half-made container is replaced, and its name is free for the new one.
#[tokio::test(start_paused = true)]
async fn a_half_made_container_on_the_volume_is_replaced_after_a_reboot() {
    let w = World::new(24);
    w.serve_then_stop().await;
    let old = w.state().container.unwrap();
    let mut state = w.state();
    state.phase = Phase::Provisioning;
    StateStore::new(&w.state_dir).save(&state).unwrap();
    w.reboot().await;
    w.serve_then_stop().await;
    let on_volume = w.roots.at(w.volume_root().as_deref()).containers();
    let new = w.state().container.unwrap();
    assert_ne!(new, old);
    assert!(
        !on_volume.contains_key(&old),
        "the half-made container is gone"
    );
    assert!(on_volume[&new].running && on_volume[&new].login.is_some());
}

/// The renter holds the key and the device rebooted: the volume (and the container's layers on it)
/// stays locked, so a stand-in from the fallback root gives the renter a login to unlock; then the
/// stand-in goes and the renter's own container is back.
#[tokio::test(start_paused = true)]
async fn a_locked_volume_gets_a_stand_in_until_the_renter_unlocks() {
    let w = World::new(24);
    w.serve_then_stop().await;
    let id = w.state().container.unwrap();
    let volume_root = w.volume_root();
    w.reboot().await;
    w.lock_volume();
    let lc = w.lifecycle();
    let check_ins_before = w.market.checkins();
    w.drive(&lc, async {
        until(Duration::from_secs(10), || {
            w.roots.at(None).containers().values().any(|c| c.running)
        })
        .await;
        assert_eq!(
            w.engine.root(),
            None,
            "the engine stays off the locked volume"
        );
        let standins = w.roots.at(None).containers();
        assert_eq!(standins.len(), 1);
        let standin = standins.values().next().unwrap();
        assert!(standin.login.is_some(), "the renter can log in to unlock");
        assert_eq!(
            w.state().container.as_ref(),
            Some(&id),
            "the state keeps the real one"
        );
        assert!(!w.roots.at(volume_root.as_deref()).containers()[&id].running);
        // Check-ins go on while locked.
        tokio::time::sleep(Duration::from_mins(25)).await;
        assert!(w.market.checkins() >= check_ins_before + 3);
        // The renter unlocks.
        w.unlock_and_await(&id, volume_root.as_deref()).await;
    })
    .await;
    assert_eq!(w.engine.root(), volume_root);
    assert!(
        w.roots.at(None).containers().is_empty(),
        "the stand-in is gone"
    );
    assert_eq!(w.state().phase, Phase::Serving);
}

/// The stand-in writes to the state partition: past half of what was free when it started, it is
/// replaced at once by a fresh one with the renter's login; the unlock still brings the renter's own
/// container back.
#[tokio::test(start_paused = true)]
async fn a_stand_in_that_fills_the_state_partition_is_replaced() {
    const MIB: u64 = 1 << 20;
    let w = World::new(24);
    w.serve_then_stop().await;
    let id = w.state().container.unwrap();
    let volume_root = w.volume_root();
    w.reboot().await;
    w.lock_volume();
    w.engine.set_fallback_free(800 * MIB);
    let running = || {
        let all = w.roots.at(None).containers();
        assert!(all.len() <= 1, "one stand-in at a time: {all:?}");
        all.into_iter()
            .find(|(_, c)| c.running && c.login.is_some())
            .map(|(id, _)| id)
    };
    let lc = w.lifecycle();
    w.drive(&lc, async {
        until(Duration::from_secs(10), || running().is_some()).await;
        let first = running().unwrap();
        // 300 MiB written: within its share.
        w.engine.set_fallback_free(500 * MIB);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(running().as_ref(), Some(&first), "within its share, kept");
        // 100 MiB more than half of what was free.
        w.engine.set_fallback_free(300 * MIB);
        until(Duration::from_secs(2), || {
            running().is_some_and(|now| now != first)
        })
        .await;
        // Its layer went with it.
        w.engine.set_fallback_free(800 * MIB);
        let second = running().unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(running(), Some(second), "the fresh one stays");
        w.unlock_and_await(&id, volume_root.as_deref()).await;
    })
    .await;
    assert!(
        w.roots.at(None).containers().is_empty(),
        "the stand-in is gone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rental_that_expires_while_locked_is_wiped() {
    let w = World::new(1);
    w.serve_then_stop().await;
    w.reboot().await;
    w.lock_volume();
    let lc = w.lifecycle();
    w.drive(&lc, async {
        tokio::time::sleep(Duration::from_mins(61)).await;
        until(Duration::from_secs(30), || w.state().rentals_completed == 1).await;
    })
    .await;
    assert!(
        w.roots.at(None).containers().is_empty(),
        "the stand-in is gone"
    );
    assert_eq!(*w.wiped_with_engine_on.lock().unwrap(), [None]);
}
