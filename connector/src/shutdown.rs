//! The stop signal: SIGTERM (docker stop, systemd) or SIGINT (Ctrl-C).

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal as unix_signal};
use tracing::{info, warn};

/// A future that completes on the first SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives early is not lost.
pub fn signal() -> impl Future<Output = ()> {
    let term = unix_signal(SignalKind::terminate());
    let int = unix_signal(SignalKind::interrupt());
    async move {
        let terminated = async {
            match term {
                Ok(mut s) => {
                    s.recv().await;
                    "SIGTERM"
                }
                Err(e) => {
                    // Ctrl-C still works, and `docker stop` still ends us after its grace period.
                    warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending().await
                }
            }
        };
        let interrupted = async {
            match int {
                Ok(mut s) => {
                    s.recv().await;
                    "SIGINT"
                }
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGINT");
                    std::future::pending().await
                }
            }
        };
        let name = tokio::select! {
            name = terminated => name,
            name = interrupted => name,
        };
        info!("{name} received; stopping");
    }
}
