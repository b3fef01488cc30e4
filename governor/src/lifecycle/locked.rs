//! A volume the renter locked (they hold its key, and the device rebooted): the renter's container
//! cannot start, its writable layer is on the volume. A stand-in container, whose layer stays on
//! the engine's own root, gives the renter their login, with the locked (empty, read-only)
//! storage, to run `p2pvps-storage unlock`; check-ins go on meanwhile.
//!
//! The stand-in's own filesystem is on the state partition, which the device needs (its state,
//! its SSH host keys, Docker's data root), and Docker's overlay2 bounds a
//! container's writes only on XFS. So the governor watches that partition while the stand-in runs:
//! the stand-in may use half of what was free when it started, and past that it is replaced by a
//! fresh one (killed at once; what was written in it goes, the renter logs in again). Nothing of
//! value lives there: the renter's files are on the locked volume.

use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use super::{Lifecycle, LifecycleError, lease};
use crate::clock::Clock;
use crate::marketplace::MarketplaceApi;
use crate::runtime::ContainerRuntime;
use crate::state::State;
use crate::storage::Storage;

/// How often the unlock and the stand-in's use of the state partition are looked at (a mountinfo
/// read and a statvfs: cheap). A card written at 40 MB/s loses at most 10 MB more between looks.
const WATCH: Duration = Duration::from_millis(250);

impl<M, R, S, C> Lifecycle<M, R, S, C>
where
    M: MarketplaceApi,
    R: ContainerRuntime,
    S: Storage,
    C: Clock,
{
    /// Serve a stand-in until the renter unlocks the volume (true: the stand-in is removed, the
    /// renter's session ends and their own container starts) or the rental expires (false).
    pub(super) async fn serve_locked(
        &self,
        state: &mut State,
        placeholder: &Path,
    ) -> Result<bool, LifecycleError> {
        let volume = state.volume.clone();
        info!(%volume, "storage locked: serving a stand-in container until the renter unlocks it");
        let expiration = lease(state).expiration;
        tokio::select! {
            r = self.enforce_sandbox(state) => r?,
            () = self.clock.sleep_until(expiration) => return Ok(false),
        }
        let mut standin = tokio::select! {
            id = self.start_stand_in(state, placeholder) => Some(id),
            () = self.clock.sleep_until(expiration) => None,
        };
        // Measured with the stand-in made: the renter image's layers are counted out already.
        let floor = self.fallback_free().map(|free| free / 2);
        if let Some(floor) = floor {
            info!(
                "stand-in container up: it may use the state partition down to {} MiB free ({} MiB free now)",
                floor >> 20,
                (floor * 2) >> 20
            );
        }
        let mut next_beat = self.clock.now();
        let unlocked = loop {
            let expiration = lease(state).expiration;
            if self.clock.now() >= next_beat {
                next_beat = self.clock.now() + self.settings.heartbeat;
                let checked = self.check_in().await;
                self.record_check_in(state, checked);
                self.store.save(state)?;
                continue;
            }
            if self.storage.layer_root(&volume).is_some() {
                info!(%volume, "the renter unlocked the storage; their container replaces the stand-in");
                break true;
            }
            let over = match (&standin, floor, self.fallback_free()) {
                (Some(id), Some(floor), Some(free)) if free < floor => {
                    Some((id.clone(), free, floor))
                }
                _ => None,
            };
            if let Some((id, free, floor)) = over {
                warn!(
                    container = %id,
                    "the stand-in container used its share of the state partition ({} MiB free, floor {} MiB): replaced by a fresh one, what was written in it is gone",
                    free >> 20,
                    floor >> 20
                );
                self.retry("remove the stand-in container", || {
                    self.runtime.remove(&id, Duration::ZERO)
                })
                .await;
                standin = tokio::select! {
                    id = self.start_stand_in(state, placeholder) => Some(id),
                    () = self.clock.sleep_until(expiration) => None,
                };
            }
            tokio::select! {
                () = self.clock.sleep_until(expiration) => break false,
                () = self.clock.sleep(WATCH) => {}
            }
        };
        if let Some(id) = standin {
            self.retry("remove the stand-in container", || {
                self.runtime.remove(&id, self.settings.stop_grace)
            })
            .await;
        }
        Ok(unlocked)
    }

    /// A stand-in container (any old one removed), with the renter's login and the tunnel to it.
    async fn start_stand_in(&self, state: &State, placeholder: &Path) -> String {
        let s = &self.settings;
        self.remove_containers(state.container.as_deref(), "an old stand-in")
            .await;
        self.retry("renter image", || {
            self.runtime.ensure_image(&s.image, s.image_tar.as_deref())
        })
        .await;
        let name = format!("{}-standin", s.container_name);
        let spec = self.container_spec(&name, placeholder.to_owned(), None);
        let id = self
            .retry("create the stand-in container", || {
                self.runtime.create(&spec)
            })
            .await;
        self.retry("start the stand-in container", || {
            self.runtime.start(&id, None)
        })
        .await;
        self.add_login(&id, lease(state)).await;
        self.publish_tunnel(state, &id).await;
        id
    }

    /// Free bytes where the stand-in's writes go, if the engine says.
    fn fallback_free(&self) -> Option<u64> {
        self.runtime.root_free()
    }
}
