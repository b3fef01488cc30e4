//! The admin API (`/admin/*`): what a person or a test does to the marketplace that a device cannot.
//! Not part of p2pvps-server2; documented in the crate docs and `devserver/README.md`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use crate::api::{ApiError, AppState, parse_id, parse_json};
use crate::fault::FaultMode;
use crate::time;

/// The admin routes (no fault injection on them).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/devices", get(list))
        .route("/admin/devices/{id}", post(add))
        .route("/admin/expire/{id}", post(expire))
        .route("/admin/expiration/{id}", put(set_expiration))
        .route("/admin/fault", get(get_fault).put(set_fault))
}

/// `GET /admin/devices`: every device with its counters, specs and lease (password included).
async fn list(State(app): State<AppState>) -> Response {
    axum::Json(app.store.list()).into_response()
}

/// `POST /admin/devices/{id}`: 201 with the new device, or 200 with the existing one.
async fn add(
    State(app): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    let (device, created) = app.store.add_device(&id).await?;
    tracing::info!(device = %id, created, "admin: add device");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(device)).into_response())
}

/// `POST /admin/expire/{id}`: the lease ends now.
async fn expire(
    State(app): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    let expiration = app.store.set_expiration(&id, time::now()).await?;
    let expiration = time::to_iso(&expiration);
    tracing::info!(device = %id, %expiration, "admin: lease expired");
    Ok(axum::Json(json!({ "expiration": expiration })).into_response())
}

/// `PUT /admin/expiration/{id}` with `{"expiration": ISO}`: the lease ends then.
async fn set_expiration(
    State(app): State<AppState>,
    Path(raw_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    let value = parse_json(&body)?;
    let Some(Value::String(text)) = value.get("expiration") else {
        return Err(ApiError::BadBody(
            "Request body must be a JSON object with a string field expiration".to_owned(),
        ));
    };
    let expiration = time::parse_iso(text)
        .map_err(|e| ApiError::BadBody(format!("Field expiration is not an ISO-8601 time: {e}")))?;
    let expiration = app.store.set_expiration(&id, expiration).await?;
    let expiration = time::to_iso(&expiration);
    tracing::info!(device = %id, %expiration, "admin: expiration set");
    Ok(axum::Json(json!({ "expiration": expiration })).into_response())
}

/// `GET /admin/fault`: the current fault mode.
async fn get_fault(State(app): State<AppState>) -> Response {
    let mode = *app.fault.borrow();
    axum::Json(json!({ "mode": mode })).into_response()
}

/// `PUT /admin/fault` with `{"mode": "none" | "error" | "hang"}`.
async fn set_fault(State(app): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let value = parse_json(&body)?;
    let mode = value
        .get("mode")
        .cloned()
        .and_then(|m| serde_json::from_value::<FaultMode>(m).ok())
        .ok_or_else(|| {
            ApiError::BadBody(
                r#"Request body must be {"mode": "none" | "error" | "hang"}"#.to_owned(),
            )
        })?;
    app.fault.send_replace(mode);
    tracing::info!(?mode, "admin: fault mode set");
    Ok(axum::Json(json!({ "mode": mode })).into_response())
}
