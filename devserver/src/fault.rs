//! Fault injection on the client API, so tests can check how a device copes with a broken or
//! silent marketplace. Admin routes are never affected: they are how a test switches faults off.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::api::AppState;

/// What the client routes do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultMode {
    /// Answer normally.
    #[default]
    None,
    /// Answer every client request with 500 `Internal server error (injected)`.
    Error,
    /// Never answer: hold each client request until the mode changes (or the server stops).
    Hang,
}

/// The plain-text body of an injected error.
pub const INJECTED_ERROR: &str = "Internal server error (injected)";

/// Middleware on `/api/client/*` applying the current [`FaultMode`].
pub async fn inject(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let mut mode_rx = app.fault.subscribe();
    let mut shutdown = app.shutdown.clone();
    loop {
        let mode = *mode_rx.borrow_and_update();
        match mode {
            FaultMode::None => return next.run(request).await,
            FaultMode::Error => {
                return (StatusCode::INTERNAL_SERVER_ERROR, INJECTED_ERROR).into_response();
            }
            FaultMode::Hang => {
                tokio::select! {
                    changed = mode_rx.changed() => {
                        if changed.is_err() {
                            return shutting_down();
                        }
                    }
                    _ = shutdown.wait_for(|stopping| *stopping) => return shutting_down(),
                }
            }
        }
    }
}

/// The answer of a held request when the server stops, so a graceful shutdown does not wait forever.
fn shutting_down() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "Server shutting down").into_response()
}
