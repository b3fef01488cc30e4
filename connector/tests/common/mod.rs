//! Test harness: an echo server standing in for the container's sshd, and a tunnel keeper whose
//! state reports are recorded; the endpoint (a real sshd) comes from p2pvps-testkit.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use p2pvps_connector::{TunnelSettings, TunnelState, tunnel};
pub use p2pvps_testkit::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

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
        let (_, port) = watch::channel(settings.remote_port);
        let task = tokio::spawn(tunnel::run(settings, port, report, async move {
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
