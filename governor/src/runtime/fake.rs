//! An in-memory runtime for fast lifecycle tests. It records what was asked of it, and can be told
//! to fail, or to lose a container (as when the engine's data is lost).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::{ContainerRuntime, ContainerSpec, RuntimeError};
use crate::socket::LeaseNotice;
use crate::types::{PasswordHash, Username};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeContainer {
    /// Unique among the runtime's containers, as in Docker.
    pub name: String,
    pub device: String,
    pub image: String,
    pub storage: PathBuf,
    pub running: bool,
    pub login: Option<(String, String)>,
    /// What the spec asked its writable layer to be.
    pub layer: Option<PathBuf>,
    /// Its writable layer when it last started (None: the engine's own root).
    pub started_on: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u32,
    containers: BTreeMap<String, FakeContainer>,
    images: Vec<String>,
    /// The next this-many calls fail as if the engine were down.
    failures: u32,
    /// What [`ContainerRuntime::root_free`] says.
    root_free: Option<u64>,
    /// Every call, in order, e.g. "create c1", "remove c1".
    log: Vec<String>,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// A runtime that already has these images.
    pub fn with_images(images: &[&str]) -> Self {
        let rt = Self::new();
        rt.inner.lock().unwrap().images = images.iter().map(|s| (*s).to_owned()).collect();
        rt
    }

    pub fn containers(&self) -> BTreeMap<String, FakeContainer> {
        self.inner.lock().unwrap().containers.clone()
    }

    pub fn calls(&self) -> Vec<String> {
        self.inner.lock().unwrap().log.clone()
    }

    pub fn fail_next(&self, n: u32) {
        self.inner.lock().unwrap().failures = n;
    }

    /// Add a container behind the governor's back (an orphan from a crash).
    pub fn insert(&self, id: &str, c: FakeContainer) {
        self.inner
            .lock()
            .unwrap()
            .containers
            .insert(id.to_owned(), c);
    }

    /// Make a container disappear (the engine lost it).
    pub fn lose(&self, id: &str) {
        self.inner.lock().unwrap().containers.remove(id);
    }

    /// Say the engine's data root has `bytes` free from now on.
    pub fn set_root_free(&self, bytes: u64) {
        self.inner.lock().unwrap().root_free = Some(bytes);
    }

    pub fn stop_behind_our_back(&self, id: &str) {
        if let Some(c) = self.inner.lock().unwrap().containers.get_mut(id) {
            c.running = false;
        }
    }

    fn call(&self, what: String) -> Result<std::sync::MutexGuard<'_, Inner>, RuntimeError> {
        let mut inner = self.inner.lock().unwrap();
        inner.log.push(what);
        if inner.failures > 0 {
            inner.failures -= 1;
            return Err(RuntimeError::Connect("injected failure".into()));
        }
        Ok(inner)
    }
}

fn gone(id: &str, action: &'static str) -> RuntimeError {
    RuntimeError::Container {
        container: id.to_owned(),
        action,
        reason: "no such container".into(),
    }
}

// The fake answers at once: async fns that never wait, which clippy flags from Rust 1.99
// (unused_async_trait_impl, a lint older clippy does not know: hence unknown_lints).
#[allow(unknown_lints, clippy::unused_async_trait_impl)]
impl ContainerRuntime for FakeRuntime {
    async fn ensure_network(&self, name: &str) -> Result<String, RuntimeError> {
        drop(self.call(format!("ensure_network {name}"))?);
        Ok(super::bridge_name(name))
    }

    async fn ensure_image(&self, image: &str, tar: Option<&Path>) -> Result<(), RuntimeError> {
        let mut inner = self.call(format!("ensure_image {image}"))?;
        if inner.images.iter().any(|i| i == image) {
            return Ok(());
        }
        match tar {
            Some(_) => {
                inner.images.push(image.to_owned());
                Ok(())
            }
            None => Err(RuntimeError::Image {
                image: image.to_owned(),
                reason: "not present and no renterImageTar to import".into(),
            }),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut inner = self.call(format!("create {}", spec.name))?;
        if !inner.images.contains(&spec.image) {
            return Err(RuntimeError::Image {
                image: spec.image.clone(),
                reason: "no such image".into(),
            });
        }
        if inner.containers.values().any(|c| c.name == spec.name) {
            return Err(RuntimeError::Container {
                container: spec.name.clone(),
                action: "create",
                reason: "409 Conflict: the container name is already in use".into(),
            });
        }
        inner.next += 1;
        let id = format!("c{}", inner.next);
        inner.containers.insert(
            id.clone(),
            FakeContainer {
                name: spec.name.clone(),
                device: spec.device.clone(),
                image: spec.image.clone(),
                storage: spec.storage.clone(),
                running: false,
                login: None,
                layer: spec.layer.clone(),
                started_on: None,
            },
        );
        Ok(id)
    }

    async fn add_login(
        &self,
        id: &str,
        user: &Username,
        hash: &PasswordHash,
        _lease: &LeaseNotice,
    ) -> Result<(), RuntimeError> {
        let mut inner = self.call(format!("add_login {id} {user}"))?;
        let c = inner
            .containers
            .get_mut(id)
            .ok_or_else(|| gone(id, "add login"))?;
        c.login = Some((user.to_string(), hash.as_str().to_owned()));
        Ok(())
    }

    async fn state(&self, id: &str) -> Result<Option<bool>, RuntimeError> {
        let inner = self.call(format!("state {id}"))?;
        Ok(inner.containers.get(id).map(|c| c.running))
    }

    async fn address(
        &self,
        id: &str,
        _network: &str,
    ) -> Result<Option<std::net::IpAddr>, RuntimeError> {
        let inner = self.call(format!("address {id}"))?;
        Ok(inner
            .containers
            .get(id)
            .filter(|c| c.running)
            .map(|_| std::net::Ipv4Addr::LOCALHOST.into()))
    }

    async fn start(&self, id: &str, layer: Option<&Path>) -> Result<(), RuntimeError> {
        let mut inner = self.call(format!("start {id}"))?;
        let c = inner
            .containers
            .get_mut(id)
            .ok_or_else(|| gone(id, "start"))?;
        // As the real runtime: the layer must be there (the volume open) to be bound.
        if let Some(dir) = layer
            && !dir.is_dir()
        {
            return Err(RuntimeError::Container {
                container: id.to_owned(),
                action: "bind its writable layer from the volume",
                reason: format!("{}: not a directory", dir.display()),
            });
        }
        c.running = true;
        c.started_on = layer.map(Path::to_owned);
        Ok(())
    }

    async fn remove(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut inner = self.call(format!("remove {id}"))?;
        inner.containers.remove(id);
        Ok(())
    }

    fn root_free(&self) -> Option<u64> {
        self.inner.lock().unwrap().root_free
    }

    async fn list(&self, device: &str) -> Result<Vec<String>, RuntimeError> {
        let inner = self.call(format!("list {device}"))?;
        Ok(inner
            .containers
            .iter()
            .filter(|(_, c)| c.device == device)
            .map(|(id, _)| id.clone())
            .collect())
    }
}
