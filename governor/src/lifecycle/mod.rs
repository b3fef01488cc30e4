//! The rental lifecycle (DESIGN.md §4): the only place that sequences the other concerns.
//!
//! `PreparingStorage -> Registering -> Provisioning -> Serving -> Expired -> Wiping -> PreparingStorage …`
//!
//! Each phase is saved before its step acts and every step is idempotent, so a restart at any point
//! resumes correctly: an interrupted wipe finishes before a new registration, a live rental keeps its
//! container, an expired one is ended. Failures of the server, the engine or the storage are retried
//! with backoff for ever; only a state file that cannot be written stops the governor.
//!
//! Everything a rental needs is made before the device registers (it is on the market from then
//! on): the volume, the network rules, and the renter's container, running with its writable layer
//! on the volume (`runtime/layer.rs`) and no login. Registration then only adds the login and the
//! tunnel. A volume locked by the renter's key (after a reboot) holds the container's layer too: a
//! stand-in container on the engine's own root serves the login until the unlock.

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::marketplace::{MarketplaceApi, Specs};
use crate::runtime::{ContainerRuntime, ContainerSpec, Limits};
use crate::sandbox::{self, Firewall, Policy, Rules};
use crate::socket::{Hub, LeaseNotice, TunnelEndpoint, TunnelSettings};
use crate::state::{Heartbeat, LeaseRecord, Phase, State, StateError, StateStore, new_volume_id};
use crate::storage::Storage;
use crate::types::{DeviceId, PasswordHash};
use p2pvps_common::Backoff;

mod locked;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    State(#[from] StateError),
}

/// Tunables of the lifecycle, from the config and the host.
#[derive(Debug, Clone)]
pub struct Settings {
    pub device: DeviceId,
    /// Between check-ins while serving.
    pub heartbeat: Duration,
    /// SIGTERM to SIGKILL when a rental ends.
    pub stop_grace: Duration,
    /// First retry delay; doubled per failure up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub container_name: String,
    pub image: String,
    pub image_tar: Option<PathBuf>,
    pub cmd: Vec<String>,
    pub limits: Limits,
    /// What registration offers.
    pub specs: Specs,
    /// The tunnel endpoint handed to the connector (with the rental's port); none in tests that
    /// run no tunnel.
    pub tunnel: Option<TunnelEndpoint>,
    /// Host directory with the governor's socket, mounted into the container.
    pub socket_dir: Option<PathBuf>,
    /// Docker network of the renter's container: one of its own.
    pub network: String,
    /// What the renter may reach beyond the internet (the owner's exceptions).
    pub sandbox: Policy,
    /// How long before the expiration the renter is told, through the connector (wall and the
    /// login banner).
    pub notices: Vec<Duration>,
}

/// What runs between rentals, before the device is offered again: no renter is served then (the
/// system update, `update/`). It may not return (the device reboots into an update).
pub trait BetweenRentals: Send + Sync {
    fn run(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The renter's Docker network (its bridge is `p2pvps0`).
pub const DEFAULT_NETWORK: &str = "p2pvps";

/// The renter is told a day, an hour and ten minutes before the end.
pub const DEFAULT_NOTICES: [Duration; 3] = [
    Duration::from_hours(24),
    Duration::from_hours(1),
    Duration::from_mins(10),
];

impl Settings {
    /// Defaults for everything but what only the config and the host know.
    pub fn new(device: DeviceId, specs: Specs, limits: Limits) -> Self {
        Self {
            device,
            heartbeat: Duration::from_mins(10),
            stop_grace: Duration::from_secs(3),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_mins(5),
            container_name: "p2pvps-renter".into(),
            image: crate::config::DEFAULT_RENTER_IMAGE.into(),
            image_tar: None,
            // The connector starts sshd and keeps the tunnel (image/renter/build installs it).
            cmd: vec![crate::runtime::CONNECTOR.into(), "serve".into()],
            limits,
            specs,
            tunnel: None,
            socket_dir: None,
            network: DEFAULT_NETWORK.into(),
            sandbox: Policy::default(),
            notices: DEFAULT_NOTICES.to_vec(),
        }
    }
}

pub struct Lifecycle<M, R, S, C> {
    market: M,
    runtime: R,
    storage: S,
    clock: C,
    store: StateStore,
    settings: Settings,
    hub: Hub,
    phase_tx: watch::Sender<Phase>,
    /// The renter's network rules; None: no network of the renter's own is made (tests of the
    /// lifecycle alone).
    firewall: Option<Arc<dyn Firewall>>,
    /// Before each registration.
    between: Option<Arc<dyn BetweenRentals>>,
}

/// How long a new container's sshd may take to answer before the device registers anyway (its
/// host keys are made at its first start: seconds on a Pi, more under emulation).
const SSHD_WAIT: Duration = Duration::from_mins(2);

/// The rental ended while the lifecycle waited.
struct Expired;

/// What a heartbeat found.
struct Beat {
    expiration: Result<DateTime<Utc>, String>,
    container_lost: bool,
}

impl<M, R, S, C> Lifecycle<M, R, S, C>
where
    M: MarketplaceApi,
    R: ContainerRuntime,
    S: Storage,
    C: Clock,
{
    pub fn new(
        market: M,
        runtime: R,
        storage: S,
        clock: C,
        store: StateStore,
        settings: Settings,
    ) -> Self {
        Self {
            market,
            runtime,
            storage,
            clock,
            store,
            settings,
            hub: Hub::default(),
            phase_tx: watch::Sender::new(Phase::PreparingStorage),
            firewall: None,
            between: None,
        }
    }

    /// Run `between` before each registration (never while a rental runs); None: nothing.
    #[must_use]
    pub fn with_between_rentals(mut self, between: Option<Arc<dyn BetweenRentals>>) -> Self {
        self.between = between;
        self
    }

    /// Put the renter's container on a network of its own, behind `firewall`'s rules.
    #[must_use]
    pub fn with_firewall(mut self, firewall: Arc<dyn Firewall>) -> Self {
        self.firewall = Some(firewall);
        self
    }

    /// Serve tunnel settings (and take reports) through this hub.
    #[must_use]
    pub fn with_hub(mut self, hub: Hub) -> Self {
        self.hub = hub;
        self
    }

    /// The socket hub: tunnel settings out, the connector's reports in.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Phase changes, for the LED and tests.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase_tx.subscribe()
    }

    /// Run until `shutdown` completes. The renter's container is left running on shutdown: stopping
    /// the governor (an upgrade, a restart) must not cut a renter off.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), LifecycleError> {
        tokio::pin!(shutdown);
        let mut state = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            s = self.resume() => s?,
        };
        loop {
            self.phase_tx.send_replace(state.phase);
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    info!(phase = state.phase.as_str(), "governor stopping; the renter's container keeps running");
                    return Ok(());
                }
                r = self.step(&mut state) => r?,
            }
        }
    }

    /// Load the saved state (or start afresh) and clear containers the state does not own.
    async fn resume(&self) -> Result<State, LifecycleError> {
        let device = &self.settings.device;
        let mut state = if let Some(s) = self.store.load()? {
            info!(phase = s.phase.as_str(), "resuming");
            s
        } else {
            info!(%device, "first start");
            let s = State::new(device.clone());
            self.store.save(&s)?;
            s
        };
        if state.device_id != *device {
            warn!(old = %state.device_id, new = %device, "device id changed; ending the old rental first");
            if state.lease.is_some() || state.container.is_some() {
                state.phase = Phase::Expired;
            }
            state.device_id = device.clone();
            self.store.save(&state)?;
        }
        if state.phase.rented() && state.lease.is_none() {
            warn!(
                phase = state.phase.as_str(),
                "state has no lease for this phase; ending it"
            );
            state.phase = Phase::Expired;
            self.store.save(&state)?;
        }
        self.remove_containers(state.container.as_deref(), "the state does not own it")
            .await;
        Ok(state)
    }

    /// Remove this device's containers in the engine's data root, all but `keep`, saying `why`.
    async fn remove_containers(&self, keep: Option<&str>, why: &str) {
        let device = self.settings.device.as_str();
        let listed = self
            .retry("list containers", || self.runtime.list(device))
            .await;
        for id in listed.into_iter().filter(|id| Some(id.as_str()) != keep) {
            warn!(container = %id, "removing a renter container: {why}");
            self.retry("remove container", || {
                self.runtime.remove(&id, self.settings.stop_grace)
            })
            .await;
        }
    }

    async fn step(&self, state: &mut State) -> Result<(), LifecycleError> {
        let live = state.phase.rented();
        // The tunnel runs while the device is listed (logged in, waiting for the port) and while a
        // rental is served (`publish_tunnel` starts it).
        if !live && state.phase != Phase::Registering {
            self.hub.set_tunnel(None);
        }
        self.hub.set_volume(live.then(|| state.volume.clone()));
        self.publish_lease(state);
        match state.phase {
            Phase::PreparingStorage => self.prepare_storage(state).await,
            Phase::Registering => self.register(state).await,
            Phase::Provisioning => {
                let expiration = lease(state).expiration;
                tokio::select! {
                    r = self.provision(state) => r,
                    () = self.clock.sleep_until(expiration) => {
                        info!("the rental expired before its container was ready");
                        self.enter(state, Phase::Expired)
                    }
                }
            }
            Phase::Serving => self.serve(state).await,
            Phase::Expired => self.end_rental(state).await,
            Phase::Wiping => self.wipe(state).await,
        }
    }

    /// The tunnel to the renter's container `id` (the renter's own, or the stand-in), kept on the
    /// host; it follows the container's address, which a restart may change. Before the device is
    /// rented the keeper logs in and waits: the rental's port is then one request away.
    async fn publish_tunnel(&self, state: &State, id: &str) {
        let Some(endpoint) = &self.settings.tunnel else {
            return;
        };
        let live = state.phase.rented();
        let port = state.lease.as_ref().filter(|_| live).map(|l| l.port.get());
        match self.runtime.address(id, &self.settings.network).await {
            Ok(Some(ip)) => self.hub.set_tunnel(Some(TunnelSettings {
                endpoint: endpoint.clone(),
                remote_port: port,
                local: std::net::SocketAddr::new(ip, 22),
            })),
            Ok(None) => {
                warn!(container = %id, "the renter's container has no address yet; the tunnel waits");
            }
            Err(e) => {
                warn!(error = %e, "cannot find the renter container's address for the tunnel");
            }
        }
    }

    /// The expiration the connector announces to the renter, while a rental is live.
    fn publish_lease(&self, state: &State) {
        let live = state.phase.rented();
        self.hub.set_lease(
            state
                .lease
                .as_ref()
                .filter(|_| live)
                .map(|l| self.lease_notice(l)),
        );
    }

    fn lease_notice(&self, l: &LeaseRecord) -> LeaseNotice {
        LeaseNotice {
            expiration: l.expiration,
            notices: self.settings.notices.clone(),
            contact: self
                .settings
                .tunnel
                .as_ref()
                .map(|t| (t.server.clone(), l.port.get())),
        }
    }

    fn enter(&self, state: &mut State, phase: Phase) -> Result<(), LifecycleError> {
        state.phase = phase;
        self.store.save(state)?;
        Ok(())
    }

    /// Everything the next rental needs, before the device is offered: a fresh volume, the
    /// renter's network rules and their container, running with its layer on the volume and no
    /// login yet.
    async fn prepare_storage(&self, state: &mut State) -> Result<(), LifecycleError> {
        info!(volume = %state.volume, storage = %self.storage.describe(), "preparing storage");
        // A container from an interrupted preparation holds the volume's layer: it goes first.
        self.remove_containers(None, "made before an interruption")
            .await;
        state.container = None;
        let volume = state.volume.clone();
        let s = &self.settings;
        // The renter image (imported once, on the first start) while the volume is made.
        let (storage, ()) = tokio::join!(
            self.retry("prepare storage", || self.storage.prepare(&volume)),
            self.retry("renter image", || {
                self.runtime.ensure_image(&s.image, s.image_tar.as_deref())
            }),
        );
        let layer = self.storage.layer_root(&volume);
        let id = self.make_container(state, storage, layer).await?;
        self.await_sshd(&id).await;
        state.ready_since = Some(self.clock.now());
        info!(container = %id, "ready for a renter");
        self.enter(state, Phase::Registering)
    }

    async fn register(&self, state: &mut State) -> Result<(), LifecycleError> {
        if let Some(between) = &self.between {
            between.run().await;
        }
        // After a restart the volume may be closed and the container stopped (a reboot) or gone:
        // all in place again before the device is offered.
        if !self.ready_again(state).await? {
            return self.enter(state, Phase::PreparingStorage);
        }
        info!(device = %self.settings.device, "registering with the marketplace");
        let lease = self
            .retry("register", || async {
                let r = self.market.register(&self.settings.specs).await;
                if let Err(e) = &r
                    && e.is_unknown_device()
                {
                    error!("the marketplace does not know device {}: check deviceId in device-config.json", self.settings.device);
                }
                r
            })
            .await;
        let record = LeaseRecord {
            username: lease.username,
            // The plain password ends here: only its hash is kept and handed on.
            password_hash: PasswordHash::of(&lease.password),
            port: lease.port,
            expiration: lease.expiration,
            registered_at: self.clock.now(),
        };
        info!(username = %record.username, port = %record.port, expiration = %record.expiration, "registered");
        state.lease = Some(record);
        self.enter(state, Phase::Provisioning)
    }

    /// Open the prepared volume and have the container running on it; false when the volume is
    /// gone (it is prepared afresh).
    async fn ready_again(&self, state: &mut State) -> Result<bool, LifecycleError> {
        let volume = state.volume.clone();
        let storage = match self.storage.open(&volume).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "the prepared storage is missing; preparing it afresh");
                return Ok(false);
            }
        };
        let layer = self.storage.layer_root(&volume);
        if self.storage.keeps_layers() && layer.is_none() {
            return Ok(false);
        }
        let id = self.ensure_container(state, storage, layer).await?;
        self.publish_tunnel(state, &id).await;
        Ok(true)
    }

    /// Wait (boundedly) for the container's sshd: a renter who buys the device at once must find
    /// it answering.
    async fn await_sshd(&self, id: &str) {
        let network = &self.settings.network;
        let deadline = self.clock.now() + SSHD_WAIT;
        while !self.runtime.serves_logins(id, network).await {
            if self.clock.now() >= deadline {
                warn!(container = %id, "the renter container's sshd does not answer yet; registering anyway");
                return;
            }
            self.clock.sleep(Duration::from_millis(250)).await;
        }
    }

    /// Give the registered renter their login in the container made for them (made now if it is
    /// gone), and the tunnel.
    async fn provision(&self, state: &mut State) -> Result<(), LifecycleError> {
        let s = &self.settings;
        let volume = state.volume.clone();
        let storage = match self.storage.open(&volume).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "the rental's storage is missing; preparing it afresh");
                self.remove_containers(None, "its volume is gone").await;
                state.container = None;
                self.retry("prepare storage", || self.storage.prepare(&volume))
                    .await
            }
        };
        let Ok(layer) = self.layer(state, &storage).await? else {
            info!("the rental expired while its storage was locked");
            return self.enter(state, Phase::Expired);
        };
        let id = self.ensure_container(state, storage, layer).await?;
        // The login before the forward: a renter who connects at once must not find sshd without
        // their user (a refused password costs them seconds). The keeper logged in while the
        // device was listed, so the forward is one request.
        if !self.add_login(&id, lease(state)).await {
            // Start over from a fresh container after a pause.
            self.retry("remove container", || {
                self.runtime.remove(&id, s.stop_grace)
            })
            .await;
            state.container = None;
            self.store.save(state)?;
            self.clock.sleep(s.retry_base * 5).await;
            return Ok(());
        }
        self.publish_tunnel(state, &id).await;
        self.enter(state, Phase::Serving)
    }

    /// Make the renter's container on the open volume (at `storage`, its layer in `layer`) and
    /// start it; its id is saved before it starts.
    async fn make_container(
        &self,
        state: &mut State,
        storage: PathBuf,
        layer: Option<PathBuf>,
    ) -> Result<String, LifecycleError> {
        let s = &self.settings;
        self.retry("renter image", || {
            self.runtime.ensure_image(&s.image, s.image_tar.as_deref())
        })
        .await;
        self.enforce_sandbox(state).await?;
        let spec = self.container_spec(&s.container_name, storage, layer.clone());
        let id = self
            .retry("create container", || self.runtime.create(&spec))
            .await;
        state.container = Some(id.clone());
        self.store.save(state)?;
        self.retry("start container", || {
            self.runtime.start(&id, layer.as_deref())
        })
        .await;
        Ok(id)
    }

    /// The saved renter container running (see [`Self::running_container`]), or a fresh one made
    /// in its place.
    async fn ensure_container(
        &self,
        state: &mut State,
        storage: PathBuf,
        layer: Option<PathBuf>,
    ) -> Result<String, LifecycleError> {
        if let Some(id) = self.running_container(state, layer.as_deref()).await? {
            return Ok(id);
        }
        self.remove_containers(None, "replaced by a fresh one")
            .await;
        self.make_container(state, storage, layer).await
    }

    /// The saved renter container, running (started again, with its layer, when stopped); None
    /// when there is none.
    async fn running_container(
        &self,
        state: &mut State,
        layer: Option<&Path>,
    ) -> Result<Option<String>, LifecycleError> {
        let Some(id) = state.container.clone() else {
            return Ok(None);
        };
        let running = self
            .retry("inspect container", || self.runtime.state(&id))
            .await;
        match running {
            None => {
                warn!(container = %id, "the renter container is gone");
                state.container = None;
                self.store.save(state)?;
                Ok(None)
            }
            Some(true) => Ok(Some(id)),
            Some(false) => {
                // After a reboot the rules are gone from the kernel: back before the container.
                self.enforce_sandbox(state).await?;
                self.retry("start container", || self.runtime.start(&id, layer))
                    .await;
                info!(container = %id, "renter container started again");
                Ok(Some(id))
            }
        }
    }

    /// Where the renter container's layer goes on the open volume (None: the storage keeps none).
    /// While the renter's key keeps the volume locked, a stand-in serves until the unlock;
    /// `Err(Expired)` when the rental ends first.
    async fn layer(
        &self,
        state: &mut State,
        storage: &Path,
    ) -> Result<Result<Option<PathBuf>, Expired>, LifecycleError> {
        if !self.storage.keeps_layers() {
            return Ok(Ok(None));
        }
        let volume = state.volume.clone();
        loop {
            if let Some(dir) = self.storage.layer_root(&volume) {
                return Ok(Ok(Some(dir)));
            }
            if !self.serve_locked(state, storage).await? {
                return Ok(Err(Expired));
            }
        }
    }

    fn container_spec(
        &self,
        name: &str,
        storage: PathBuf,
        layer: Option<PathBuf>,
    ) -> ContainerSpec {
        let s = &self.settings;
        ContainerSpec {
            name: name.to_owned(),
            image: s.image.clone(),
            cmd: s.cmd.clone(),
            device: s.device.to_string(),
            storage,
            storage_propagation: self.storage.mounts_propagate(),
            socket_dir: s.socket_dir.clone(),
            network: s.network.clone(),
            dns: sandbox::host_resolvers(),
            limits: s.limits,
            layer,
        }
    }

    /// The renter's network and its rules, in place before any container of the renter starts
    /// (retried until they are); the bridge is kept in the state for `status` and `check`.
    async fn enforce_sandbox(&self, state: &mut State) -> Result<(), LifecycleError> {
        if self.firewall.is_none() {
            return Ok(());
        }
        let bridge = self
            .retry("the renter's network rules", || self.apply_rules())
            .await;
        if state.network_rules.as_deref() != Some(bridge.as_str()) {
            info!(network = %self.settings.network, %bridge, "renter network rules in place");
            state.network_rules = Some(bridge);
            self.store.save(state)?;
        }
        Ok(())
    }

    /// Make the renter's network and apply its rules once; the bridge's name.
    async fn apply_rules(&self) -> Result<String, String> {
        let Some(firewall) = &self.firewall else {
            return Ok(String::new());
        };
        let bridge = self
            .runtime
            .ensure_network(&self.settings.network)
            .await
            .map_err(|e| e.to_string())?;
        let rules = Rules {
            bridge,
            policy: self.settings.sandbox.clone(),
            resolvers: sandbox::host_resolvers(),
        };
        firewall.apply(&rules).await.map_err(|e| e.to_string())?;
        Ok(rules.bridge)
    }

    async fn add_login(&self, id: &str, l: &LeaseRecord) -> bool {
        match self
            .runtime
            .add_login(id, &l.username, &l.password_hash, &self.lease_notice(l))
            .await
        {
            Ok(()) => {
                info!(container = %id, username = %l.username, "renter container running");
                true
            }
            Err(e) => {
                error!(error = %e, "cannot create the renter's login");
                false
            }
        }
    }

    async fn serve(&self, state: &mut State) -> Result<(), LifecycleError> {
        let hb = self.settings.heartbeat;
        let mut backoff = Backoff::new(
            self.settings.retry_base.max(Duration::from_secs(1)),
            self.settings.retry_cap.min(hb),
        );
        // Check in at once: it confirms the new container to the marketplace, and after a restart
        // it picks up an expiration that changed while the governor was down.
        let mut delay = Duration::ZERO;
        let expiration = lease(state).expiration;
        // After a restart (a reboot above all) the volume must be mounted again before the first
        // heartbeat starts the stopped container: its bind would show the bare mount point.
        let volume = state.volume.clone();
        let storage = tokio::select! {
            p = self.retry("open storage", || self.storage.open(&volume)) => p,
            () = self.clock.sleep_until(expiration) => {
                info!("rental expired");
                return self.enter(state, Phase::Expired);
            }
        };
        let Ok(layer) = self.layer(state, &storage).await? else {
            info!("the rental expired while its storage was locked");
            return self.enter(state, Phase::Expired);
        };
        let Some(id) = self.running_container(state, layer.as_deref()).await? else {
            return self.enter(state, Phase::Provisioning);
        };
        self.publish_tunnel(state, &id).await;
        let expiration = lease(state).expiration;
        info!(%expiration, "serving");
        loop {
            let expiration = lease(state).expiration;
            let beat = tokio::select! {
                () = self.clock.sleep_until(expiration) => None,
                b = async {
                    self.clock.sleep(delay).await;
                    self.heartbeat(state, layer.as_deref()).await
                } => Some(b),
            };
            let Some(beat) = beat else { break };
            if let Some(id) = state.container.clone() {
                self.publish_tunnel(state, &id).await;
            }
            if self.record_check_in(state, beat.expiration) {
                delay = hb;
                backoff.reset();
            } else {
                delay = backoff.next_delay();
            }
            if beat.container_lost {
                warn!("the renter container is gone; recreating it");
                return self.enter(state, Phase::Provisioning);
            }
            self.store.save(state)?;
        }
        info!(expiration = %lease(state).expiration, "rental expired");
        self.enter(state, Phase::Expired)
    }

    /// Check in and read the expiration.
    async fn check_in(&self) -> Result<DateTime<Utc>, String> {
        async {
            self.market.check_in().await?;
            self.market.expiration().await
        }
        .await
        .map_err(|e| e.to_string())
    }

    /// Keep a check-in's answer: the new expiration, or the failure. True when it succeeded.
    fn record_check_in(&self, state: &mut State, checked: Result<DateTime<Utc>, String>) -> bool {
        let at = self.clock.now();
        let expiration = lease(state).expiration;
        match checked {
            Ok(new) => {
                if new != expiration {
                    info!(old = %expiration, new = %new, "the marketplace changed the expiration");
                    lease_mut(state).expiration = new;
                    self.publish_lease(state);
                }
                state.last_heartbeat = Some(Heartbeat { at, error: None });
                self.hub.counters().check_in(true);
                true
            }
            Err(e) => {
                warn!(error = %e, %expiration, "heartbeat failed; the rental holds until its expiration");
                state.last_heartbeat = Some(Heartbeat { at, error: Some(e) });
                self.hub.counters().check_in(false);
                false
            }
        }
    }

    /// Check in, read the expiration, and make sure the container still runs (with its `layer`).
    async fn heartbeat(&self, state: &State, layer: Option<&Path>) -> Beat {
        let expiration = self.check_in().await;
        let mut container_lost = false;
        if let Some(id) = &state.container {
            match self.runtime.state(id).await {
                Ok(Some(true)) => {}
                Ok(Some(false)) => {
                    warn!(container = %id, "renter container stopped; starting it again");
                    if let Err(e) = self.apply_rules().await {
                        warn!(error = %e, "the renter's network rules are not in place; the container stays stopped");
                    } else if let Err(e) = self.runtime.start(id, layer).await {
                        warn!(error = %e, "cannot restart the renter container");
                    }
                }
                Ok(None) => container_lost = true,
                Err(e) => warn!(error = %e, "cannot inspect the renter container"),
            }
        }
        Beat {
            expiration,
            container_lost,
        }
    }

    async fn end_rental(&self, state: &mut State) -> Result<(), LifecycleError> {
        if let Some(id) = state.container.clone() {
            info!(container = %id, "stopping and removing the renter container");
            self.retry("remove container", || {
                self.runtime.remove(&id, self.settings.stop_grace)
            })
            .await;
            state.container = None;
        }
        self.enter(state, Phase::Wiping)
    }

    async fn wipe(&self, state: &mut State) -> Result<(), LifecycleError> {
        let volume = state.volume.clone();
        info!(%volume, "wiping the renter's storage");
        let started = tokio::time::Instant::now();
        self.retry("wipe storage", || async {
            self.storage.wipe(&volume).await?;
            self.storage.verify_wiped(&volume).await
        })
        .await;
        self.hub.counters().wiped(started.elapsed());
        info!(%volume, "storage wiped and verified");
        if state.lease.take().is_some() {
            state.rentals_completed += 1;
        }
        state.volume = new_volume_id();
        state.last_heartbeat = None;
        state.ready_since = None;
        self.enter(state, Phase::PreparingStorage)
    }

    /// Retry `f` with backoff until it succeeds, logging each failure.
    async fn retry<T, E, F, Fut>(&self, what: &str, f: F) -> T
    where
        E: Display,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut backoff = Backoff::new(self.settings.retry_base, self.settings.retry_cap);
        loop {
            match f().await {
                Ok(v) => return v,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "{what} failed");
                    self.clock.sleep(delay).await;
                }
            }
        }
    }
}

fn lease(state: &State) -> &LeaseRecord {
    state
        .lease
        .as_ref()
        .expect("phases after registration hold a lease")
}

fn lease_mut(state: &mut State) -> &mut LeaseRecord {
    state
        .lease
        .as_mut()
        .expect("phases after registration hold a lease")
}
