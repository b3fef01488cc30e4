//! Test harness: a real OpenSSH sshd as the tunnel endpoint on a random loopback port, an echo
//! server standing in for the container's sshd, and a tunnel keeper whose state reports are
//! recorded. The tunnel-only user comes from `scripts/tunnel-endpoint setup`.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use p2pvps_connector::{TunnelSettings, TunnelState, tunnel};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub const TUNNEL_USER: &str = "p2pvps-tunnel";
/// The script's documented test-only default, unless the environment says otherwise.
pub const DEFAULT_TEST_PASSWORD: &str = "p2pvps-tunnel-test";
const SSHD: &str = "/usr/sbin/sshd";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the workspace")
        .to_path_buf()
}

pub fn tunnel_password() -> String {
    std::env::var("P2PVPS_TUNNEL_PASSWORD").unwrap_or_else(|_| DEFAULT_TEST_PASSWORD.to_owned())
}

/// Runs `scripts/tunnel-endpoint setup` once per test binary (it is idempotent), so the user and
/// its password are exactly what the script makes.
pub fn ensure_tunnel_user() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let script = repo_root().join("scripts/tunnel-endpoint");
        let out = Command::new(&script)
            .arg("setup")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "`scripts/tunnel-endpoint setup` failed (run it as root before these tests): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

pub fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "p2pvps-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// What `ssh-keygen -l -E sha256` says about a public key: the value a device pins.
pub fn fingerprint(pub_key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(pub_key)
        .output()
        .expect("run ssh-keygen -l");
    assert!(out.status.success(), "ssh-keygen -l: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .expect("ssh-keygen -l prints `bits fingerprint comment (type)`")
        .to_owned()
}

/// The sshd settings a test may change from the example config.
#[derive(Clone, Default)]
pub struct EndpointOptions {
    /// `ClientAliveInterval` and `ClientAliveCountMax`, to free a dead session's port quickly.
    pub client_alive: Option<(u32, u32)>,
}

/// OpenSSH's sshd with `image/tunnel-endpoint/sshd_config`, on 127.0.0.1 at a random port, with
/// its host key, pid file, log and authorized_keys in a temporary directory.
pub struct Endpoint {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub fingerprint: String,
    options: EndpointOptions,
    child: Option<Child>,
}

impl Endpoint {
    pub fn start() -> Self {
        Self::start_with(EndpointOptions::default())
    }

    pub fn start_with(options: EndpointOptions) -> Self {
        ensure_tunnel_user();
        let dir = tempfile::tempdir().expect("temp dir");
        keygen(&dir.path().join("host_key"));
        let fingerprint = fingerprint(&dir.path().join("host_key.pub"));
        let mut endpoint = Self {
            dir,
            port: free_port(),
            fingerprint,
            options,
            child: None,
        };
        endpoint.spawn();
        endpoint
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn authorize_key(&self, pub_key: &Path) {
        std::fs::copy(pub_key, self.path("authorized_keys")).expect("write authorized_keys");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all("/run/sshd").expect("create sshd's privilege separation dir");
        let _ = std::fs::remove_file(self.path("pid"));
        let d = self.dir.path().display();
        let mut args = vec![
            "-D".to_owned(),
            "-f".to_owned(),
            repo_root()
                .join("image/tunnel-endpoint/sshd_config")
                .display()
                .to_string(),
            "-E".to_owned(),
            format!("{d}/sshd.log"),
            "-o".to_owned(),
            format!("Port={}", self.port),
            "-o".to_owned(),
            "ListenAddress=127.0.0.1".to_owned(),
            "-o".to_owned(),
            format!("HostKey={d}/host_key"),
            "-o".to_owned(),
            format!("PidFile={d}/pid"),
            // The test's keys live in a temp dir under world-writable /tmp, which StrictModes
            // (rightly) refuses; the example config keeps it on.
            "-o".to_owned(),
            format!("AuthorizedKeysFile={d}/authorized_keys"),
            "-o".to_owned(),
            "StrictModes=no".to_owned(),
        ];
        if let Some((interval, count)) = self.options.client_alive {
            args.extend([
                "-o".to_owned(),
                format!("ClientAliveInterval={interval}"),
                "-o".to_owned(),
                format!("ClientAliveCountMax={count}"),
            ]);
        }
        let mut child = Command::new(SSHD)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sshd");
        // sshd writes its pid file once the listening socket is bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.path("pid").exists() {
            if let Some(status) = child.try_wait().expect("poll sshd") {
                panic!("sshd exited at start ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Kills sshd and every session process it forked, as a crash or reboot of the endpoint would.
    /// (Killing only the listener is not enough: OpenSSH's sessions survive it on purpose.)
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let mut victims = descendants(pid);
            victims.push(pid);
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(victims.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .status();
            let _ = child.wait();
        }
    }

    /// Kill, then start again on the same port with the same host key.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The processes below `pid`, found through /proc's parent links.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // The parent pid is the second field after the command name, which is in
            // parentheses and may itself contain spaces.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(parent) = parent {
                parents.push((p, parent));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(child, _) in parents.iter().filter(|(_, pp)| *pp == parent) {
            found.push(child);
            frontier.push(child);
        }
    }
    found
}

/// A TCP echo server standing in for the container's sshd.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.into_split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    addr
}

/// Sends `payload` to 127.0.0.1:`port` and reads until the other side closes. Writes and reads at
/// once, so that a payload larger than the socket buffers cannot deadlock.
pub async fn round_trip(port: u16, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut rd, mut wr) = stream.into_split();
    let write = async {
        wr.write_all(payload).await?;
        wr.shutdown().await
    };
    let read = async {
        let mut back = Vec::new();
        rd.read_to_end(&mut back).await.map(|_| back)
    };
    let (w, r) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(write, read) })
        .await
        .map_err(|_| std::io::Error::other("round trip timed out"))?;
    w?;
    r
}

/// Waits until a round trip through the tunnel returns what was sent.
pub async fn wait_usable(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match round_trip(port, b"ping through the tunnel").await {
            Ok(back) if back == b"ping through the tunnel" => return,
            Ok(back) => last = format!("got {} bytes back", back.len()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("tunnel on port {port} not usable within {limit:?}: {last}");
}

/// Settings for a tunnel from `endpoint` (remote port `remote_port` on 127.0.0.1) to `local`,
/// as the JSON the connector reads.
pub fn settings_json(endpoint: &Endpoint, remote_port: u16, local: SocketAddr) -> Value {
    json!({
        "server": "127.0.0.1",
        "serverPort": endpoint.port,
        "user": TUNNEL_USER,
        "password": tunnel_password(),
        "remotePort": remote_port,
        "bindAddress": "127.0.0.1",
        "localAddr": local.to_string(),
    })
}

pub fn parse(v: &Value) -> TunnelSettings {
    TunnelSettings::from_json(&v.to_string()).expect("test settings are valid")
}

/// A tunnel keeper running in this process, with every state it reported.
pub struct Keeper {
    history: watch::Receiver<Vec<TunnelState>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    started: Instant,
}

impl Keeper {
    pub fn start(settings: TunnelSettings) -> Self {
        // The keeper's log lines, shown by the test harness when a test fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,russh=warn")
            .with_test_writer()
            .with_ansi(false)
            .try_init();
        let (tx, history) = watch::channel(Vec::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let report = move |state: TunnelState| tx.send_modify(|h| h.push(state));
        let task = tokio::spawn(tunnel::run(settings, report, async move {
            let _ = stopped.await;
        }));
        Self {
            history,
            stop: Some(stop),
            task,
            started: Instant::now(),
        }
    }

    pub fn history(&self) -> Vec<TunnelState> {
        self.history.borrow().clone()
    }

    /// Waits until the history satisfies `pred`; panics with the history after `limit`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&[TunnelState]) -> bool,
    ) -> Vec<TunnelState> {
        let waited = tokio::time::timeout(limit, self.history.wait_for(|h| pred(h)))
            .await
            .map(|h| h.map(|h| h.clone()));
        match waited {
            Ok(Ok(h)) => h,
            _ => panic!(
                "not {what} within {limit:?} (after {:?}); states: {:#?}",
                self.started.elapsed(),
                self.history()
            ),
        }
    }

    /// Waits for an `Up` reported after the first `after` states.
    pub async fn wait_up_after(&mut self, after: usize, limit: Duration) {
        self.wait_for("up", limit, |h| {
            h.iter().skip(after).any(TunnelState::is_up)
        })
        .await;
    }

    /// Waits for a `Down` after the first `after` states whose error contains `needle`; returns it.
    pub async fn wait_down_after(&mut self, after: usize, needle: &str, limit: Duration) -> String {
        let h = self
            .wait_for(&format!("down with `{needle}`"), limit, |h| {
                h.iter()
                    .skip(after)
                    .any(|s| down_error(s).is_some_and(|e| e.contains(needle)))
            })
            .await;
        h.iter()
            .skip(after)
            .find_map(|s| down_error(s).filter(|e| e.contains(needle)))
            .unwrap()
            .to_owned()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the keeper stops within 10 s of being told")
            .expect("the keeper task does not panic");
    }
}

pub fn down_error(s: &TunnelState) -> Option<&str> {
    match s {
        TunnelState::Down { error, .. } => Some(error),
        _ => None,
    }
}

/// A TCP relay that can be frozen: its current connections stop carrying bytes but stay open, as
/// over a link that died without a FIN or RST. New connections after a freeze are relayed again.
pub struct FreezableRelay {
    pub port: u16,
    freeze: watch::Sender<u64>,
}

impl FreezableRelay {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let port = listener.local_addr().unwrap().port();
        let (freeze, generation) = watch::channel(0_u64);
        let held: Arc<Mutex<Vec<(TcpStream, TcpStream)>>> = Arc::default();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let mut generation = generation.clone();
                let held = Arc::clone(&held);
                tokio::spawn(async move {
                    let born = *generation.borrow_and_update();
                    let frozen = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        _ = generation.wait_for(|g| *g != born) => true,
                    };
                    if frozen {
                        held.lock().unwrap().push((inbound, outbound));
                    }
                });
            }
        });
        Self { port, freeze }
    }

    pub fn freeze_current(&self) {
        self.freeze.send_modify(|g| *g += 1);
    }
}
