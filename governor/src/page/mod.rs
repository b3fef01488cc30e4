//! The owner's page: the device's status in a browser on the home network (`/`, refreshed from
//! `/status.json` without a reload) and `/metrics` for Prometheus, on `statusPort`. Read-only: GET
//! and HEAD of a few fixed paths, nothing taken from the request but the path. The renter's
//! container cannot reach it (the sandbox drops whatever its bridge sends to the host).
//!
//! A small HTTP/1.1 responder rather than a web framework: one request per connection, no body,
//! bounded reads and connections, a few KiB of code and memory on a device whose governor must stay
//! under 10 MiB.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::check::{self, CheckEnv};
use crate::socket::Hub;

pub mod view;

/// The page's address (`http://<name>.local[:port]/`), in the state dir for `status`.
pub const URL_FILE: &str = "page-url";
/// At most this many connections at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// A request head must arrive whole within this time and size.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 8 * 1024;
/// `check`'s lines are run again at most this often (they ask the marketplace and the endpoint).
const CHECK_EVERY: Duration = Duration::from_mins(10);
/// The network rules are asked of the kernel (`nft`) at most this often: a page left open must not
/// cost a Pi a process every few seconds.
const RULES_EVERY: Duration = Duration::from_mins(1);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(
        "cannot listen on port {port} for the owner's page: {source} (set statusPort in device-config.json to another port, or 0 to turn the page off)"
    )]
    Bind { port: u16, source: std::io::Error },
}

/// What the page shows, and where it reads it.
pub struct PageSource {
    pub state_dir: PathBuf,
    /// Where the rentals' volumes are mounted (`<root>/<volume>`).
    pub storage_root: PathBuf,
    pub config_path: PathBuf,
    pub check_env: CheckEnv,
    pub hub: Hub,
    /// `p2pvps-<6 hex>.local`.
    pub name: String,
    /// The governor's idea of now: the marketplace's time while the system clock is not
    /// synchronised (a Pi has no real-time clock), so the time left is the rental's.
    pub now: Box<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>,
    checks: Mutex<Checks>,
    /// The last network rules' text, for which bridge, and when.
    rules: Mutex<Option<(String, String, tokio::time::Instant)>>,
}

impl std::fmt::Debug for PageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageSource")
            .field("state_dir", &self.state_dir)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Checks {
    lines: Vec<check::Line>,
    at: Option<chrono::DateTime<chrono::Utc>>,
    running: bool,
    last_run: Option<tokio::time::Instant>,
}

impl PageSource {
    pub fn new(
        state_dir: PathBuf,
        storage_root: PathBuf,
        config_path: PathBuf,
        hub: Hub,
        name: String,
        now: Box<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>,
    ) -> Self {
        let check_env = CheckEnv {
            state_dir: state_dir.clone(),
            ..CheckEnv::default()
        };
        Self {
            state_dir,
            storage_root,
            config_path,
            check_env,
            hub,
            name,
            now,
            checks: Mutex::default(),
            rules: Mutex::default(),
        }
    }

    /// Whether the renter's network rules for `bridge` are in place, in words; asked of the kernel
    /// at most every [`RULES_EVERY`].
    fn rules(&self, bridge: &str) -> String {
        let mut cached = self.rules.lock().unwrap();
        match &*cached {
            Some((b, text, at)) if b == bridge && at.elapsed() < RULES_EVERY => text.clone(),
            _ => {
                let text = crate::status::rules_text(bridge);
                *cached = Some((bridge.to_owned(), text.clone(), tokio::time::Instant::now()));
                text
            }
        }
    }

    /// The last `check` lines and when they were made; a new run starts in the background when
    /// they are older than [`CHECK_EVERY`] (or there are none).
    fn checks(self: &Arc<Self>) -> (Vec<check::Line>, Option<chrono::DateTime<chrono::Utc>>) {
        let mut c = self.checks.lock().unwrap();
        let stale = c.last_run.is_none_or(|t| t.elapsed() >= CHECK_EVERY);
        if stale && !c.running {
            c.running = true;
            c.last_run = Some(tokio::time::Instant::now());
            let source = Arc::clone(self);
            tokio::spawn(async move {
                let lines = check::run(&source.config_path, &source.check_env).await;
                let mut c = source.checks.lock().unwrap();
                c.lines = lines;
                c.at = Some(chrono::Utc::now());
                c.running = false;
            });
        }
        (c.lines.clone(), c.at)
    }
}

/// The device's name on the home network (mDNS): `p2pvps-` and the device id's first 6 hex.
pub fn local_name(device_id: &str) -> String {
    let short: String = device_id.chars().take(6).collect();
    format!("p2pvps-{}", short.to_ascii_lowercase())
}

/// Listen on `port` on every address of the host (IPv6 and IPv4).
pub async fn bind(port: u16) -> Result<TcpListener, PageError> {
    let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    match TcpListener::bind(any6).await {
        Ok(l) => Ok(l),
        // A kernel without IPv6.
        Err(_) => TcpListener::bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)))
            .await
            .map_err(|source| PageError::Bind { port, source }),
    }
}

/// Serve the page on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, source: Arc<PageSource>) {
    if let Ok(addr) = listener.local_addr() {
        info!(port = addr.port(), name = %format!("{}.local", source.name), "owner's page listening");
    }
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "owner's page: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue;
        };
        let source = Arc::clone(&source);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = answer(stream, &source).await;
        });
    }
}

async fn answer(mut stream: TcpStream, source: &Arc<PageSource>) -> std::io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            return respond(
                &mut stream,
                false,
                Response::text(431, "request head too large"),
            )
            .await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let mut words = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or("/"),
    );
    let path = target.split('?').next().unwrap_or("/");
    let head_only = method == "HEAD";
    let response = if method != "GET" && !head_only {
        Response::text(405, "the owner's page is read-only: GET and HEAD only")
    } else {
        route(path, source)
    };
    respond(&mut stream, head_only, response).await
}

fn route(path: &str, source: &Arc<PageSource>) -> Response {
    match path {
        "/" | "/index.html" => Response::new(200, "text/html; charset=utf-8", INDEX_HTML.into()),
        "/app.js" => Response::new(200, "text/javascript; charset=utf-8", APP_JS.into()),
        "/style.css" => Response::new(200, "text/css; charset=utf-8", STYLE_CSS.into()),
        "/status.json" => {
            let (checks, checked_at) = source.checks();
            let page = view::gather(source, checks, checked_at);
            match serde_json::to_string(&page) {
                Ok(json) => Response::new(200, "application/json", json),
                Err(e) => Response::text(500, &e.to_string()),
            }
        }
        "/metrics" => Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(&view::sample(source)),
        ),
        _ => Response::text(404, "not found: the page is at /, its metrics at /metrics"),
    }
}

/// The request head (up to the blank line), or None when it is larger than [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn new(status: u16, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            body,
        }
    }

    fn text(status: u16, body: &str) -> Self {
        Self::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }
}

async fn respond(stream: &mut TcpStream, head_only: bool, r: Response) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let allow = if r.status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    // Everything the page loads is the device's own; nothing may frame it.
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n\
         Content-Security-Policy: default-src 'self'; frame-ancestors 'none'\r\n{allow}Connection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(r.body.as_bytes()).await?;
    }
    stream.shutdown().await
}
