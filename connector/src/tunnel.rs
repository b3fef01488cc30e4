//! The tunnel keeper: opens a session, forwards the rental's port (once it has one), reports it,
//! waits for it to end, and tries again with backoff, until told to stop. Where the settings came from and where the reports go is the
//! caller's business.

use std::future::Future;
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::session::{Session, SessionError};
use crate::settings::TunnelSettings;
use crate::state::TunnelState;
use p2pvps_common::Backoff;

const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest a renter waits for the tunnel after the endpoint is back.
const BACKOFF_CAP: Duration = Duration::from_mins(1);
/// A session that lasted this long was a success: the next failure starts the backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Keeps the reverse tunnel up until `shutdown` completes: logged in, and forwarding the port in
/// `port` once there is one (it may come later: the session waits logged in). `report` is called on
/// every state change; it must not block (hand the state to a channel if it needs to do I/O).
pub async fn run<R, S>(
    settings: TunnelSettings,
    mut port: watch::Receiver<Option<NonZeroU16>>,
    report: R,
    shutdown: S,
) where
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
        let ended = match opened {
            Ok(session) => {
                let at = Instant::now();
                serve(session, &mut port, &report, &mut shutdown)
                    .await
                    .map(|error| (error, Some(at)))
            }
            Err(error) => Some((error, None)),
        };
        let Some((error, logged_in_at)) = ended else {
            break;
        };
        if logged_in_at.is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
            backoff.reset();
        }
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

/// One logged-in session: wait for the port (when there is none yet), forward it, and carry it
/// until the session ends (why) or `shutdown` (`None`).
async fn serve<R, S>(
    mut session: Session,
    port: &mut watch::Receiver<Option<NonZeroU16>>,
    report: &R,
    shutdown: &mut std::pin::Pin<&mut S>,
) -> Option<SessionError>
where
    R: Fn(TunnelState),
    S: Future<Output = ()>,
{
    let wanted = loop {
        if let Some(p) = *port.borrow_and_update() {
            break p;
        }
        report(TunnelState::Standby);
        tokio::select! {
            error = session.closed() => return Some(error),
            changed = port.changed() => if changed.is_err() {
                // No port can come any more: as good as a stop.
                session.close().await;
                return None;
            },
            () = shutdown.as_mut() => {
                session.close().await;
                return None;
            }
        }
    };
    if let Err(error) = session.forward(wanted).await {
        return Some(error);
    }
    info!(port = wanted.get(), "tunnel up: renters can log in");
    report(TunnelState::Up { since: Utc::now() });
    tokio::select! {
        error = session.closed() => Some(error),
        () = shutdown.as_mut() => {
            session.close().await;
            None
        }
    }
}
