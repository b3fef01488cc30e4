//! The tunnel keeper: opens a session, reports it, waits for it to end, and tries again with
//! backoff, until told to stop. Where the settings came from and where the reports go is the
//! caller's business.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::{info, warn};

use crate::session::Session;
use crate::settings::TunnelSettings;
use crate::state::TunnelState;
use p2pvps_common::Backoff;

const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest a renter waits for the tunnel after the endpoint is back.
const BACKOFF_CAP: Duration = Duration::from_mins(1);
/// A session that lasted this long was a success: the next failure starts the backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Keeps the reverse tunnel up until `shutdown` completes. `report` is called on every state
/// change; it must not block (hand the state to a channel if it needs to do I/O).
pub async fn run<R, S>(settings: TunnelSettings, report: R, shutdown: S)
where
    R: Fn(TunnelState) + Send + Sync,
    S: Future<Output = ()>,
{
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);
    let endpoint = settings.endpoint();
    tokio::pin!(shutdown);
    loop {
        info!(%endpoint, user = %settings.user, "connecting to the tunnel endpoint");
        report(TunnelState::Connecting);
        let opened = tokio::select! {
            opened = Session::open(&settings) => opened,
            () = &mut shutdown => break,
        };
        let error = match opened {
            Ok(mut session) => {
                let up_at = Instant::now();
                info!(
                    port = settings.remote_port.get(),
                    "tunnel up: renters can log in"
                );
                report(TunnelState::Up { since: Utc::now() });
                let ended = tokio::select! {
                    error = session.closed() => Some(error),
                    () = &mut shutdown => None,
                };
                let Some(error) = ended else {
                    session.close().await;
                    break;
                };
                if up_at.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                }
                error
            }
            Err(error) => error,
        };
        let retry_in = backoff.next_delay();
        // The one line an owner reads to learn why renters cannot log in.
        warn!(
            retry_in_seconds = format_args!("{:.1}", retry_in.as_secs_f64()),
            "tunnel down: {error}"
        );
        report(TunnelState::Down {
            error: error.to_string(),
            retry_in,
        });
        tokio::select! {
            () = tokio::time::sleep(retry_in) => {}
            () = &mut shutdown => break,
        }
    }
    info!("tunnel keeper stopped");
}
