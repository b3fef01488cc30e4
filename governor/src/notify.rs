//! systemd's service notifications (sd_notify(3)), spoken directly on `$NOTIFY_SOCKET`: `READY=1`
//! once the governor runs, `STATUS=` with its phase (`systemctl status` shows it), `STOPPING=1` on
//! the way out, and `WATCHDOG=1` keep-alives at half of `$WATCHDOG_USEC` for as long as the async
//! runtime answers. The unit's `WatchdogSec=` then has systemd kill and restart a governor that
//! hangs (a stalled runtime, a stopped process) instead of leaving a rental unenforced.
//! Without `$NOTIFY_SOCKET` (not started by systemd, or a test) every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={value:?}: {reason}")]
    Socket { value: String, reason: String },
}

/// Where systemd listens, and how often it wants to hear from us. The default sends nothing.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd sets: `NOTIFY_SOCKET` (a path, or `@name` in the abstract
    /// namespace), `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog is ours only if it names us).
    pub fn from_env() -> Result<Self, NotifyError> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Self::new(
            var("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
        )
    }

    fn new(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Result<Self, NotifyError> {
        let Some(value) = socket else {
            return Ok(Self::default());
        };
        let err = |reason: String| NotifyError::Socket {
            value: value.to_owned(),
            reason,
        };
        let addr = if let Some(name) = value.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| err(e.to_string()))?
        } else if value.starts_with('/') {
            SocketAddr::from_pathname(value).map_err(|e| err(e.to_string()))?
        } else {
            return Err(err("neither a path nor @name".into()));
        };
        let socket = UnixDatagram::unbound().map_err(|e| err(e.to_string()))?;
        let ours = watchdog_pid.is_none_or(|pid| pid.parse() == Ok(std::process::id()));
        let watchdog = watchdog_usec
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|&usec| ours && usec > 0)
            .map(Duration::from_micros);
        Ok(Self {
            target: Some((socket, addr)),
            watchdog,
        })
    }

    /// The interval systemd's watchdog expects keep-alives within, if it watches us.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Send one notification (`KEY=value` lines). A failure is logged, never fatal: systemd may
    /// be restarting.
    pub fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
            warn!(error = %e, "cannot notify systemd");
        }
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// One line of what the governor does, for `systemctl status`.
    pub fn status(&self, text: &str) {
        // A newline would start another assignment.
        self.send(&format!("STATUS={}", text.replace('\n', " ")));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Keep-alives from a task of the runtime, for as long as the runtime runs it. Call within
    /// the tokio runtime; nothing when systemd does not watch.
    pub fn spawn_keepalive(self: &std::sync::Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.watchdog? / 2;
        debug!(?every, "systemd watchdog keep-alives");
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.send("WATCHDOG=1");
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_notify_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::new(None, Some("1000000"), None).unwrap();
        assert!(n.watchdog().is_none());
        n.ready();
    }

    #[test]
    fn a_path_socket_receives_the_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str(), Some("4000000"), None).unwrap();
        assert_eq!(n.watchdog(), Some(Duration::from_secs(4)));
        n.ready();
        n.status("serving\nREADY=0");
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=serving READY=0");
    }

    #[test]
    fn an_abstract_socket_is_reached_too() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("p2pvps-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(Some(&format!("@{name}")), None, None).unwrap();
        n.stopping();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }

    #[test]
    fn the_watchdog_is_ours_only_if_it_names_our_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _listener = UnixDatagram::bind(&path).unwrap();
        let me = std::process::id().to_string();
        let other = (std::process::id() + 1).to_string();
        let watched = Notifier::new(path.to_str(), Some("500000"), Some(&me)).unwrap();
        assert_eq!(watched.watchdog(), Some(Duration::from_millis(500)));
        let parent = Notifier::new(path.to_str(), Some("500000"), Some(&other)).unwrap();
        assert_eq!(parent.watchdog(), None);
        let off = Notifier::new(path.to_str(), Some("0"), None).unwrap();
        assert_eq!(off.watchdog(), None);
        let e = Notifier::new(Some("relative"), None, None).unwrap_err();
        assert!(e.to_string().contains("neither a path"), "{e}");
    }
}
