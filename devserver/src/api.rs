//! The client API of p2pvps-server2 (`/api/client/*`), byte for byte where a device can tell:
//! status codes, plain-text error bodies, JSON success bodies, `toISOString` timestamps.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::fault::{self, FaultMode};
use crate::id::DeviceId;
use crate::store::{DeviceRecord, Specs, Store, StoreError};
use crate::{admin, time};

/// What every handler shares.
pub type AppState = Arc<Shared>;

/// The server's shared state.
#[derive(Debug)]
pub struct Shared {
    /// Devices and leases.
    pub store: Store,
    /// The current fault mode; the hang fault waits on its changes.
    pub fault: watch::Sender<FaultMode>,
    /// Becomes `true` when the server stops, releasing hung requests.
    pub shutdown: watch::Receiver<bool>,
}

/// The whole router: client API (behind fault injection) and admin API.
pub fn router(state: AppState) -> Router {
    let client = Router::new()
        .route("/api/client/register/{id}", post(register))
        .route("/api/client/checkin/{id}", get(checkin))
        .route("/api/client/expiration/{id}", get(expiration))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            fault::inject,
        ));
    client.merge(admin::router()).with_state(state)
}

/// An error answer: a status and a plain-text body, as the marketplace (Koa's `ctx.throw`) sends.
#[derive(Debug)]
pub enum ApiError {
    /// 422 `Invalid GUID`.
    InvalidGuid,
    /// 404 `Could not find that device.`
    UnknownDevice,
    /// 404 `Device has no rental.`
    NoRental,
    /// 400 with what is wrong with the body.
    BadBody(String),
    /// 500 `No free tunnel port.`
    NoFreePort,
    /// 500 `Internal server error` (the detail goes to the log).
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            Self::InvalidGuid => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid GUID".to_owned()),
            Self::UnknownDevice => (
                StatusCode::NOT_FOUND,
                "Could not find that device.".to_owned(),
            ),
            Self::NoRental => (StatusCode::NOT_FOUND, "Device has no rental.".to_owned()),
            Self::BadBody(problem) => (StatusCode::BAD_REQUEST, problem),
            Self::NoFreePort => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "No free tunnel port.".to_owned(),
            ),
            Self::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error".to_owned(),
            ),
        };
        (status, body).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownDevice => Self::UnknownDevice,
            StoreError::NoRental => Self::NoRental,
            StoreError::NoFreePort => Self::NoFreePort,
            StoreError::Persist(e) => {
                tracing::error!(error = %e, "could not save state");
                Self::Internal
            }
        }
    }
}

/// Checks a path id: 422 `Invalid GUID` unless 24 hex digits.
pub fn parse_id(raw: &str) -> Result<DeviceId, ApiError> {
    raw.parse().map_err(|_| ApiError::InvalidGuid)
}

/// Parses a request body as JSON (whatever the Content-Type says): 400 naming the problem.
pub fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadBody(format!("Request body is not valid JSON: {e}")))
}

/// The register body: an object with four string fields (extra fields are ignored).
fn parse_specs(body: &Bytes) -> Result<Specs, ApiError> {
    let value = parse_json(body)?;
    let Value::Object(object) = value else {
        return Err(ApiError::BadBody(
            "Request body must be a JSON object with string fields memory, diskSpace, processor, internetSpeed".to_owned(),
        ));
    };
    let field = |name: &str| match object.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ApiError::BadBody(format!(
            "Field {name} must be a string, not {other}"
        ))),
        None => Err(ApiError::BadBody(format!("Field {name} is missing"))),
    };
    Ok(Specs {
        memory: field("memory")?,
        disk_space: field("diskSpace")?,
        processor: field("processor")?,
        internet_speed: field("internetSpeed")?,
    })
}

/// The device object of a register answer: the public fields of the marketplace's device model
/// plus the login and port.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireDevice {
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "__v")]
    version: u32,
    owner_user: String,
    renter_user: String,
    device_name: String,
    device_desc: String,
    rent_hourly_rate: String,
    rent_start_date: String,
    expiration: String,
    memory: String,
    disk_space: String,
    processor: String,
    internet_speed: String,
    checkin_time_stamp: String,
    username: String,
    password: String,
    port: u16,
}

impl WireDevice {
    fn from_record(device: &DeviceRecord) -> Option<Self> {
        let lease = device.lease.as_ref()?;
        let specs = device.specs.clone()?;
        Some(Self {
            id: device.id.to_string(),
            version: 0,
            owner_user: "devserver-owner".to_owned(),
            renter_user: "devserver-renter".to_owned(),
            device_name: format!("devserver device {}", device.id),
            device_desc: "A device registered with p2pvps-devserver".to_owned(),
            rent_hourly_rate: "0".to_owned(),
            rent_start_date: time::to_iso(&lease.start),
            expiration: time::to_iso(&lease.expiration),
            memory: specs.memory,
            disk_space: specs.disk_space,
            processor: specs.processor,
            internet_speed: specs.internet_speed,
            // As the marketplace does: registering counts as checking in for this field.
            checkin_time_stamp: time::to_iso(&lease.start),
            username: lease.username.clone(),
            password: lease.password.clone(),
            port: lease.port,
        })
    }
}

/// `POST /api/client/register/{id}`. Checks in order: id (422), body (400), device (404).
async fn register(
    State(app): State<AppState>,
    Path(raw_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    let specs = parse_specs(&body)?;
    let device = app.store.register(&id, specs).await?;
    let wire = WireDevice::from_record(&device).ok_or(ApiError::Internal)?;
    tracing::info!(
        device = %id,
        registrations = device.registrations,
        port = wire.port,
        username = %wire.username,
        expiration = %wire.expiration,
        "registered"
    );
    Ok(axum::Json(json!({ "device": wire })).into_response())
}

/// `GET /api/client/checkin/{id}`.
async fn checkin(
    State(app): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    let device = app.store.checkin(&id).await?;
    tracing::info!(device = %id, checkins = device.checkins, "checked in");
    Ok(axum::Json(json!({ "success": true })).into_response())
}

/// `GET /api/client/expiration/{id}`.
async fn expiration(
    State(app): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw_id)?;
    let expiration = app.store.expiration(&id)?;
    tracing::debug!(device = %id, "expiration queried");
    Ok(axum::Json(json!({ "expiration": time::to_iso(&expiration) })).into_response())
}
