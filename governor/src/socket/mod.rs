//! The governor's Unix socket, mounted read-only into the renter's container at `/run/p2pvps`:
//! the connector reports the renter's SSH sessions and reads the lease; the renter's
//! `p2pvps-storage` asks for the storage key's state, sets a passphrase and unlocks. The tunnel's
//! settings are not served here: the tunnel runs on the host (`sandbox/tunnel.rs`).
//!
//! Protocol: one JSON object per line each way. Requests: `{"op": "sessions", "count": N}` (renter
//! SSH sessions open) -> `{"ok": true}`;
//! `{"op": "storage-status"}` -> `{"ok": true, "storage": {"encrypted", "holder", "locked"}}`;
//! `{"op": "storage-set-passphrase", "passphrase": "…", "old": "…"?}` and
//! `{"op": "storage-unlock", "passphrase": "…"}` -> `{"ok": true, "restarts": bool}` (true: the
//! renter's own container, whose layers are on the volume, replaces the stand-in they are in); `{"op": "lease"}` ->
//! `{"ok": true, "lease": {"expiration": "RFC 3339", "notices": [seconds before it, …]}}` (the
//! connector tells the renter). The passphrase crosses the
//! socket once, is held in memory for the key derivation, and is never logged or stored.
//! Failures answer `{"ok": false, "error": "…"}`. Everything that comes in is
//! untrusted (the renter is root in the container): lines are capped and checked.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::storage::VolumeKeys;
use crate::types::Secret;

pub mod limits;

use limits::{IDLE, MAX_CONNECTIONS, PassphraseBackoff, RateLimit};

/// The socket's file name inside the shared directory.
pub const SOCKET_NAME: &str = "governor.sock";
/// Where the shared directory appears inside the container.
pub const CONTAINER_DIR: &str = "/run/p2pvps";
/// A request line longer than this is refused (and the connection closed).
const LINE_LIMIT: usize = 8 * 1024;
/// The last tunnel report, for `status`, in the state dir.
pub const TUNNEL_FILE: &str = "tunnel.json";

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

/// The marketplace's tunnel endpoint, from the config.
#[derive(Debug, Clone)]
pub struct TunnelEndpoint {
    pub server: String,
    pub server_port: u16,
    pub user: String,
    pub password: Option<Secret>,
    /// The device's own key, tried before the password.
    pub private_key: Option<crate::sandbox::tunnel::PrivateKey>,
    /// `SHA256:…` pin of the endpoint's host key.
    pub host_key: Option<String>,
}

/// What the tunnel keeper needs (the connector's `TunnelSettings` on the wire).
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    pub endpoint: TunnelEndpoint,
    /// The port the endpoint forwards to this rental (from registration); `None` before the
    /// device is rented: the keeper logs in and waits for it.
    pub remote_port: Option<u16>,
    /// The renter container's sshd, where forwarded connections go.
    pub local: std::net::SocketAddr,
}

impl TunnelSettings {
    /// Whether `self` is `before` with the rental's port added (and nothing else changed): the
    /// keeper already logged in is given the port instead of being replaced.
    pub fn adds_port_to(&self, before: &Self) -> bool {
        before.remote_port.is_none()
            && self.remote_port.is_some()
            && Self {
                remote_port: None,
                ..self.clone()
            }
            .to_wire()
                == before.to_wire()
    }

    /// The connector's settings JSON (secrets included: it goes to the keeper's stdin only).
    pub fn to_wire(&self) -> Value {
        let e = &self.endpoint;
        let mut v = json!({
            "server": e.server,
            "serverPort": e.server_port,
            "user": e.user,
            "localAddr": self.local.to_string(),
        });
        if let Some(p) = self.remote_port {
            v["remotePort"] = json!(p);
        }
        if let Some(p) = &e.password {
            v["password"] = Value::String(p.expose().to_owned());
        }
        if let Some(k) = &e.private_key {
            v["privateKey"] = Value::String(k.expose().to_owned());
        }
        if let Some(k) = &e.host_key {
            v["hostKey"] = Value::String(k.clone());
        }
        v
    }
}

/// The rental's end as the connector announces it to the renter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseNotice {
    pub expiration: DateTime<Utc>,
    /// Tell the renter this long before the expiration (each once).
    pub notices: Vec<std::time::Duration>,
    /// Where renters log in: the tunnel endpoint and the rental's port (not secret: the
    /// marketplace lists them), for the commands the renter's tools print.
    pub contact: Option<(String, u16)>,
}

impl LeaseNotice {
    /// The lease as the connector reads it (from the socket, or with the login).
    pub fn to_wire(&self) -> Value {
        let mut lease = json!({
            "expiration": self.expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "notices": self.notices.iter().map(std::time::Duration::as_secs).collect::<Vec<_>>(),
        });
        if let Some((server, port)) = &self.contact {
            lease["server"] = json!(server);
            lease["port"] = json!(port);
        }
        lease
    }
}

/// The tunnel's state as the connector last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelReport {
    /// `connecting`, `up` or `down`.
    pub state: String,
    /// Why it is down, when it is.
    pub error: Option<String>,
    pub reported_at: DateTime<Utc>,
    /// Renter SSH sessions open in the container, as last reported.
    #[serde(default)]
    pub sessions: u32,
}

/// Shared between the lifecycle (which sets the settings), the tunnel keeper and the socket's
/// connections.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Mutex<HubInner>>,
    /// The tunnel the keeper should run now (None between rentals).
    tunnel: Arc<watch::Sender<Option<TunnelSettings>>>,
    /// Renter sessions open now, for the LED.
    sessions: Arc<watch::Sender<u32>>,
    /// The storage's key control, where the storage has keys; one request at a time.
    keys: Option<Arc<dyn VolumeKeys>>,
    key_lock: Arc<tokio::sync::Mutex<()>>,
    /// The renter container's layer is on the volume: an unlock brings their own container back.
    layer_on_volume: bool,
    /// The renter's request rate, over all connections.
    rate: Arc<RateLimit>,
    /// The wait after wrong passphrases.
    passphrases: Arc<PassphraseBackoff>,
    /// Check-ins and wipes, for the owner's page and `/metrics`.
    counters: Arc<crate::metrics::Counters>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("inner", &self.inner)
            .field("keys", &self.keys.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            tunnel: Arc::new(watch::Sender::new(None)),
            sessions: Arc::new(watch::Sender::new(0)),
            keys: None,
            key_lock: Arc::default(),
            layer_on_volume: false,
            rate: Arc::default(),
            passphrases: Arc::default(),
            counters: Arc::default(),
        }
    }
}

#[derive(Debug, Default)]
struct HubInner {
    report: Option<TunnelReport>,
    /// Where reports are saved for `status`; none in tests without a state dir.
    report_file: Option<PathBuf>,
    /// The storage volume of the rental in force.
    volume: Option<String>,
    /// When a renter-reported sessions count was last saved.
    sessions_saved: Option<tokio::time::Instant>,
    lease: Option<LeaseNotice>,
}

impl Hub {
    /// A hub that saves tunnel reports in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        let hub = Self::default();
        hub.inner.lock().unwrap().report_file = Some(state_dir.join(TUNNEL_FILE));
        hub
    }

    /// Answer the renter's storage key requests with `keys`.
    #[must_use]
    pub fn with_keys(mut self, keys: Arc<dyn VolumeKeys>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The renter container's layer is on the volume (`runtime/layer.rs`).
    #[must_use]
    pub fn with_layer_on_volume(mut self) -> Self {
        self.layer_on_volume = true;
        self
    }

    /// The volume the renter's key requests apply to; None between rentals.
    pub fn set_volume(&self, volume: Option<String>) {
        self.inner.lock().unwrap().volume = volume;
    }

    /// Check-ins and wipes since the start.
    pub fn counters(&self) -> &crate::metrics::Counters {
        &self.counters
    }

    /// The rental's end, for the renter's notices; None between rentals.
    pub fn set_lease(&self, lease: Option<LeaseNotice>) {
        self.inner.lock().unwrap().lease = lease;
    }

    /// The tunnel to keep; None between rentals. The keeper restarts only on a real change.
    pub fn set_tunnel(&self, settings: Option<TunnelSettings>) {
        let ending = settings.is_none();
        self.tunnel.send_if_modified(|current| {
            let wire = |t: &Option<TunnelSettings>| t.as_ref().map(TunnelSettings::to_wire);
            let changed = wire(current) != wire(&settings);
            *current = settings;
            changed
        });
        let mut inner = self.inner.lock().unwrap();
        if ending {
            inner.report = None;
            self.sessions.send_replace(0);
            if let Some(f) = &inner.report_file {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    /// The rental's end as the connector gets it now.
    pub fn lease(&self) -> Option<LeaseNotice> {
        self.inner.lock().unwrap().lease.clone()
    }

    /// The tunnel to keep now.
    pub fn tunnel(&self) -> Option<TunnelSettings> {
        self.tunnel.borrow().clone()
    }

    /// The tunnel to keep, as it changes (for the keeper).
    pub fn tunnel_changes(&self) -> watch::Receiver<Option<TunnelSettings>> {
        self.tunnel.subscribe()
    }

    /// The number of renter SSH sessions open, as it changes.
    pub fn sessions(&self) -> watch::Receiver<u32> {
        self.sessions.subscribe()
    }

    pub fn tunnel_report(&self) -> Option<TunnelReport> {
        self.inner.lock().unwrap().report.clone()
    }

    async fn respond(&self, line: &str) -> Value {
        let Ok(req) = serde_json::from_str::<Value>(line) else {
            return json!({"ok": false, "error": "not a JSON object"});
        };
        match req.get("op").and_then(Value::as_str) {
            Some(op @ ("storage-status" | "storage-set-passphrase" | "storage-unlock")) => {
                let op = op.to_owned();
                self.storage_request(&op, &req).await
            }
            _ => self.handle(&req),
        }
    }

    async fn storage_request(&self, op: &str, req: &Value) -> Value {
        let Some(keys) = self.keys.clone() else {
            return json!({"ok": false, "error": "this device's storage has no key to manage (storageDevice is none)"});
        };
        let Some(volume) = self.inner.lock().unwrap().volume.clone() else {
            return json!({"ok": false, "error": "no rental in force"});
        };
        let secret = |field: &str| -> Result<Option<Secret>, String> {
            match req.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => {
                    Secret::passphrase(s).map(Some).map_err(|e| e.to_string())
                }
                Some(_) => Err(format!("{field} must be a string")),
            }
        };
        let (passphrase, old) = match (secret("passphrase"), secret("old")) {
            (Ok(p), Ok(o)) => (p, o),
            (Err(e), _) | (_, Err(e)) => return json!({"ok": false, "error": e}),
        };
        // Only a key derivation is costly: a wrong passphrase makes the next one wait, and
        // nothing but a right one (not a malformed request) ends the wait.
        let derives = op != "storage-status";
        if derives && passphrase.is_none() {
            return json!({"ok": false, "error": "missing \"passphrase\""});
        }
        if derives && let Err(wait) = self.passphrases.check() {
            return json!({"ok": false, "error": format!(
                "a wrong passphrase was given: try again in {} s", wait.as_secs().max(1)
            )});
        }
        let op = op.to_owned();
        let restarts = self.layer_on_volume;
        let _one_at_a_time = self.key_lock.lock().await;
        let answer = tokio::task::spawn_blocking(move || match (op.as_str(), passphrase) {
            ("storage-status", _) => keys
                .key_status(&volume)
                .map(|s| json!({"ok": true, "storage": s})),
            ("storage-set-passphrase", Some(p)) => keys
                .set_passphrase(&volume, &p, old.as_ref())
                .map(|()| json!({"ok": true})),
            ("storage-unlock", Some(p)) => keys
                .unlock(&volume, &p)
                .map(|_| json!({"ok": true, "restarts": restarts})),
            _ => Ok(json!({"ok": false, "error": "missing \"passphrase\""})),
        })
        .await;
        if derives {
            match &answer {
                Ok(Ok(_)) => self.passphrases.succeeded(),
                _ => self.passphrases.failed(),
            }
        }
        match answer {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                warn!(error = %e, "renter storage request failed");
                json!({"ok": false, "error": e.to_string()})
            }
            Err(e) => json!({"ok": false, "error": format!("internal error: {e}")}),
        }
    }

    fn handle(&self, req: &Value) -> Value {
        match req.get("op").and_then(Value::as_str) {
            Some("lease") => match &self.inner.lock().unwrap().lease {
                Some(l) => json!({"ok": true, "lease": l.to_wire()}),
                None => json!({"ok": false, "error": "no rental in force"}),
            },
            Some("sessions") => match req.get("count").and_then(Value::as_u64) {
                Some(n @ 0..=10_000) => {
                    self.record_sessions(u32::try_from(n).expect("checked range"));
                    json!({"ok": true})
                }
                _ => json!({"ok": false, "error": "count must be a number of sessions"}),
            },
            Some(other) => {
                json!({"ok": false, "error": format!("unknown op {:?}", crate::types::shorten(other))})
            }
            None => json!({"ok": false, "error": "missing \"op\""}),
        }
    }

    /// The renter's own count: the LED follows it at once; the log and the saved report (SD card
    /// writes) at most every [`SESSIONS_QUIET`], so a renter flipping it cannot wear the card.
    fn record_sessions(&self, count: u32) {
        self.sessions.send_replace(count);
        let now = tokio::time::Instant::now();
        {
            let mut inner = self.inner.lock().unwrap();
            if inner
                .sessions_saved
                .is_some_and(|t| now < t + SESSIONS_QUIET)
            {
                return;
            }
            inner.sessions_saved = Some(now);
        }
        self.flush_sessions();
    }

    /// Keep the tunnel's state (from the keeper) for `status` and the log; written to the state
    /// dir only when it changed.
    pub fn record(&self, mut report: TunnelReport) {
        report.sessions = *self.sessions.borrow();
        let mut inner = self.inner.lock().unwrap();
        if inner.report.as_ref().map(|r| (&r.state, &r.error))
            != Some((&report.state, &report.error))
        {
            if let Some(error) = &report.error {
                warn!(state = %report.state, %error, "tunnel {}", report.state);
            } else {
                info!(state = %report.state, "tunnel {}", report.state);
            }
            save_report(inner.report_file.as_deref(), &report);
        }
        inner.report = Some(report);
    }

    /// Save a sessions count that [`SESSIONS_QUIET`] held back (called every so often).
    fn flush_sessions(&self) {
        let count = *self.sessions.borrow();
        let mut inner = self.inner.lock().unwrap();
        let inner = &mut *inner;
        if let Some(report) = &mut inner.report
            && report.sessions != count
        {
            report.sessions = count;
            info!(
                sessions = count,
                "renter sessions (reported by the renter's container)"
            );
            save_report(inner.report_file.as_deref(), report);
        }
    }
}

/// How often a renter-reported sessions count may reach the log and the state dir.
const SESSIONS_QUIET: std::time::Duration = std::time::Duration::from_secs(5);

fn save_report(file: Option<&Path>, report: &TunnelReport) {
    if let Some(f) = file
        && let Err(e) = write_atomic(f, &serde_json::to_vec(report).expect("report serialises"))
    {
        warn!(error = %e, "cannot save the tunnel state");
    }
}

/// A state line of the tunnel keeper (`{"state": "up"|…, "error": …}`).
pub fn parse_report(v: Option<&Value>) -> Result<TunnelReport, String> {
    let v = v.ok_or("missing \"state\"")?;
    let state = v
        .get("state")
        .and_then(Value::as_str)
        .ok_or("state.state must be a string")?;
    if !matches!(state, "connecting" | "standby" | "up" | "down") {
        return Err(format!(
            "unknown tunnel state {:?}",
            crate::types::shorten(state)
        ));
    }
    let error = v
        .get("error")
        .and_then(Value::as_str)
        .map(|e| crate::types::shorten_to(e.replace(|c: char| c.is_control(), " ").trim(), 400));
    Ok(TunnelReport {
        state: state.to_owned(),
        error,
        reported_at: Utc::now(),
        sessions: 0,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The host directory holding the socket, bind-mounted at [`CONTAINER_DIR`].
pub fn host_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("run")
}

/// Bind the socket in `dir` (replacing a stale one) and serve connections in a task. `owner` is
/// the host uid and gid of the container's root when the engine remaps it (else the socket stays
/// root's). Call it within the tokio runtime.
pub fn serve(
    dir: &Path,
    owner: Option<(u32, u32)>,
    hub: Hub,
) -> Result<tokio::task::JoinHandle<()>, SocketError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| SocketError::Io {
            path,
            action,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let path = dir.join(SOCKET_NAME);
    // A socket left by the previous run (or anything the renter put there) is replaced.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", &path)(e)),
        _ => {}
    }
    let listener = UnixListener::bind(&path).map_err(io("bind", &path))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        // Only root, in the container or on the host, talks to the governor.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod", &path))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io("chown", &path))?;
        }
    }
    info!(socket = %path.display(), "renter socket listening");
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let flusher = hub.clone();
    Ok(tokio::spawn(async move {
        let _flush = crate::AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(SESSIONS_QUIET).await;
                flusher.flush_sessions();
            }
        }));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match open.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let hub = hub.clone();
                        tokio::spawn(async move {
                            connection(stream, hub).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tokio::spawn(refuse(stream));
                    }
                },
                Err(e) => {
                    warn!(error = %e, "renter socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }))
}

/// Over [`MAX_CONNECTIONS`]: one line saying so, then the connection closes.
async fn refuse(mut stream: UnixStream) {
    let answer = b"{\"ok\":false,\"error\":\"too many connections to the governor; close some and try again\"}\n";
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(answer)).await;
}

async fn connection(stream: UnixStream, hub: Hub) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        // Take<&mut BufReader> reads through the shared buffer: pipelined lines are not lost.
        let mut limited = (&mut reader).take(LINE_LIMIT as u64 + 1);
        match tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line)).await {
            Err(_) | Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
        }
        if line.len() > LINE_LIMIT {
            let _ = write
                .write_all(b"{\"ok\":false,\"error\":\"line too long\"}\n")
                .await;
            return;
        }
        hub.rate.admit().await;
        let text = String::from_utf8_lossy(&line);
        let mut answer = hub.respond(text.trim_end()).await.to_string();
        answer.push('\n');
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageError;

    async fn ask(path: &Path, line: &str) -> Value {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(line.as_bytes()).await.unwrap();
        s.write_all(b"\n").await.unwrap();
        let mut r = BufReader::new(s);
        let mut answer = String::new();
        r.read_line(&mut answer).await.unwrap();
        serde_json::from_str(&answer).unwrap()
    }

    #[tokio::test]
    async fn settings_and_reports_over_the_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let hub = Hub::new(tmp.path());
        let dir = host_dir(tmp.path());
        let _task = serve(&dir, None, hub.clone()).unwrap();
        let sock = dir.join(SOCKET_NAME);

        // The tunnel's settings and state are not the renter's business: neither op exists.
        for op in ["tunnel-settings", "tunnel-state"] {
            let a = ask(
                &sock,
                &format!(r#"{{"op": "{op}", "state": {{"state": "up"}}}}"#),
            )
            .await;
            assert!(a["error"].as_str().unwrap().contains("unknown op"), "{a}");
        }
        let settings = TunnelSettings {
            endpoint: TunnelEndpoint {
                server: "127.0.0.1".into(),
                server_port: 2222,
                user: "p2pvps-tunnel".into(),
                password: Some(Secret::password("tunnelpw").unwrap()),
                private_key: None,
                host_key: None,
            },
            remote_port: Some(6001),
            local: "172.18.0.2:22".parse().unwrap(),
        };
        let wire = settings.to_wire();
        assert_eq!(wire["password"], "tunnelpw");
        assert_eq!(wire["localAddr"], "172.18.0.2:22");
        assert_eq!(wire["remotePort"], 6001);
        // Listed, not rented: no port on the wire; the port alone is added to a keeper that runs.
        let listed = TunnelSettings {
            remote_port: None,
            ..settings.clone()
        };
        assert!(listed.to_wire().get("remotePort").is_none());
        assert!(settings.adds_port_to(&listed));
        assert!(!listed.adds_port_to(&settings) && !settings.adds_port_to(&settings));
        let moved = TunnelSettings {
            local: "172.18.0.3:22".parse().unwrap(),
            ..settings.clone()
        };
        assert!(
            !moved.adds_port_to(&listed),
            "a new address is a new keeper"
        );
        let mut changes = hub.tunnel_changes();
        hub.set_tunnel(Some(settings.clone()));
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        hub.set_tunnel(Some(settings));
        assert!(
            !changes.has_changed().unwrap(),
            "the same settings restart nothing"
        );

        // The keeper's state lines.
        hub.record(parse_report(Some(&json!({"state": "down", "error": "refused\n"}))).unwrap());
        let r = hub.tunnel_report().unwrap();
        assert_eq!(
            (r.state.as_str(), r.error.as_deref()),
            ("down", Some("refused"))
        );
        let saved: TunnelReport =
            serde_json::from_slice(&std::fs::read(tmp.path().join(TUNNEL_FILE)).unwrap()).unwrap();
        assert_eq!(saved, r);

        // Sessions reported by the connector reach the LED's watch and the saved report.
        let mut sessions = hub.sessions();
        assert_eq!(
            ask(&sock, r#"{"op": "sessions", "count": 2}"#).await,
            json!({"ok": true})
        );
        assert_eq!(*sessions.borrow_and_update(), 2);
        assert_eq!(hub.tunnel_report().unwrap().sessions, 2);
        let saved: TunnelReport =
            serde_json::from_slice(&std::fs::read(tmp.path().join(TUNNEL_FILE)).unwrap()).unwrap();
        assert_eq!(saved.sessions, 2);
        let a = ask(&sock, r#"{"op": "sessions", "count": -1}"#).await;
        assert_eq!(a["ok"], false);

        for (bad, want) in [
            ("nonsense", "not a JSON object"),
            (r#"{"op": "rm -rf"}"#, "unknown op"),
            (r"{}", "missing \"op\""),
        ] {
            let a = ask(&sock, bad).await;
            assert_eq!(a["ok"], false);
            assert!(a["error"].as_str().unwrap().contains(want), "{bad}: {a}");
        }
        let a = ask(&sock, &"x".repeat(LINE_LIMIT + 10)).await;
        assert_eq!(a["error"], "line too long");
        assert!(
            parse_report(Some(&json!({"state": "exploded"})))
                .unwrap_err()
                .contains("unknown tunnel state")
        );

        hub.set_tunnel(None);
        assert!(hub.tunnel_report().is_none());
        assert_eq!(*sessions.borrow_and_update(), 0);
        assert!(!tmp.path().join(TUNNEL_FILE).exists());
    }

    /// Records what reaches the storage; a passphrase "wrong…" is refused.
    #[derive(Default)]
    struct FakeKeys {
        calls: Mutex<Vec<String>>,
    }

    impl VolumeKeys for FakeKeys {
        fn key_status(&self, id: &str) -> Result<crate::storage::KeyStatus, StorageError> {
            self.calls.lock().unwrap().push(format!("status {id}"));
            Ok(crate::storage::KeyStatus {
                encrypted: true,
                holder: crate::storage::KeyHolder::Device,
                locked: false,
            })
        }

        fn set_passphrase(
            &self,
            id: &str,
            passphrase: &Secret,
            old: Option<&Secret>,
        ) -> Result<(), StorageError> {
            self.calls.lock().unwrap().push(format!(
                "set {id} {} {:?}",
                passphrase.expose(),
                old.map(Secret::expose)
            ));
            Ok(())
        }

        fn unlock(&self, id: &str, passphrase: &Secret) -> Result<PathBuf, StorageError> {
            if passphrase.expose().starts_with("wrong") {
                self.calls.lock().unwrap().push(format!("wrong {id}"));
                return Err(StorageError::Refused("wrong passphrase".into()));
            }
            self.calls.lock().unwrap().push(format!("unlock {id}"));
            Ok(PathBuf::from("/mnt"))
        }
    }

    #[tokio::test]
    async fn storage_key_requests_reach_the_live_volume_only() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = Arc::new(FakeKeys::default());
        let hub = Hub::new(tmp.path()).with_keys(keys.clone());
        let dir = host_dir(tmp.path());
        let _task = serve(&dir, None, hub.clone()).unwrap();
        let sock = dir.join(SOCKET_NAME);

        let a = ask(&sock, r#"{"op": "storage-status"}"#).await;
        assert_eq!(a, json!({"ok": false, "error": "no rental in force"}));
        hub.set_volume(Some("vol1".into()));
        let a = ask(&sock, r#"{"op": "storage-status"}"#).await;
        assert_eq!(
            a,
            json!({"ok": true, "storage": {"encrypted": true, "holder": "device", "locked": false}})
        );
        let a = ask(
            &sock,
            r#"{"op": "storage-set-passphrase", "passphrase": "long enough"}"#,
        )
        .await;
        assert_eq!(a, json!({"ok": true}));
        let a = ask(
            &sock,
            r#"{"op": "storage-unlock", "passphrase": "wrong one"}"#,
        )
        .await;
        assert_eq!(a, json!({"ok": false, "error": "wrong passphrase"}));
        // The next guesses wait: answered at once, no derivation made.
        for _ in 0..5 {
            let a = ask(
                &sock,
                r#"{"op": "storage-unlock", "passphrase": "wrong again"}"#,
            )
            .await;
            assert!(
                a["error"].as_str().unwrap().contains("try again in 1 s"),
                "{a}"
            );
        }
        for (bad, want) in [
            (r#"{"op": "storage-unlock"}"#, "missing \"passphrase\""),
            (
                r#"{"op": "storage-unlock", "passphrase": "short"}"#,
                "passphrase must be 8-512 characters",
            ),
            (
                r#"{"op": "storage-unlock", "passphrase": 12345678}"#,
                "passphrase must be a string",
            ),
            (
                r#"{"op": "storage-set-passphrase", "passphrase": "long enough", "old": "aaaa\nbbbb"}"#,
                "control character",
            ),
        ] {
            let a = ask(&sock, bad).await;
            assert_eq!(a["ok"], false, "{bad}");
            assert!(a["error"].as_str().unwrap().contains(want), "{bad}: {a}");
        }
        assert_eq!(
            *keys.calls.lock().unwrap(),
            ["status vol1", "set vol1 long enough None", "wrong vol1"]
        );
        hub.set_volume(None);
        let a = ask(
            &sock,
            r#"{"op": "storage-unlock", "passphrase": "long enough"}"#,
        )
        .await;
        assert_eq!(a["error"], "no rental in force");

        // An unlock says whether the renter's own container is to replace the one they are in.
        for (hub, restarts) in [
            (Hub::new(tmp.path()).with_keys(keys.clone()), false),
            (
                Hub::new(tmp.path())
                    .with_keys(keys.clone())
                    .with_layer_on_volume(),
                true,
            ),
        ] {
            hub.set_volume(Some("vol2".into()));
            let a = hub
                .respond(r#"{"op": "storage-unlock", "passphrase": "long enough"}"#)
                .await;
            assert_eq!(a, json!({"ok": true, "restarts": restarts}));
        }

        // Without a key-managing storage (the directory backend) the requests say so.
        let plain = Hub::new(tmp.path());
        plain.set_volume(Some("vol1".into()));
        let a = plain.respond(r#"{"op": "storage-status"}"#).await;
        assert!(
            a["error"].as_str().unwrap().contains("no key to manage"),
            "{a}"
        );
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = host_dir(tmp.path());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(SOCKET_NAME), "junk").unwrap();
        let _task = serve(&dir, None, Hub::default()).unwrap();
        let a = ask(&dir.join(SOCKET_NAME), r#"{"op": "lease"}"#).await;
        assert_eq!(a, json!({"ok": false, "error": "no rental in force"}));
    }
}
