//! The admin HTTP API (token-protected), the dashboard event stream, and the shard downloads
//! that clients use.
//!
//! Every admin route needs `Authorization: Bearer <token>`; only the event stream also takes
//! `?token=` (the browser's `EventSource` cannot set headers; a token in a URL ends up in logs
//! and history, so nowhere else). The token is compared in constant time.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use protocol::admin::{
    ClientInfo, FieldError, JoinInfo, RunAction, RunConfig, RunHistory, RunSummary,
};
use protocol::{FrameKind, TensorFrame};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::{broadcast, oneshot};
use tracing::warn;

use crate::AppState;
use crate::coordinator::{AdminError, Command};

/// An API error: status + a JSON body `{ "error": "...", "field": "..." }` naming what was
/// wrong. Internal details are logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(
        "missing or wrong admin token: send `Authorization: Bearer <token>` (printed by the server at start)"
    )]
    Unauthorized,
    #[error("{0}")]
    Invalid(FieldError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error (see the server log)")]
    Internal(String),
}

impl From<AdminError> for AppError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(f) => Self::Invalid(f),
            AdminError::NotFound(m) => Self::NotFound(m),
            AdminError::Conflict(m) => Self::Conflict(m),
            AdminError::Store(e) => Self::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(detail) => {
                warn!(%detail, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let field = match &self {
            Self::Invalid(f) => Some(f.field.clone()),
            _ => None,
        };
        let body = serde_json::json!({ "error": self.to_string(), "field": field });
        (status, Json(body)).into_response()
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// Rejects a request without the admin token.
pub async fn require_token(
    State(state): State<AppState>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let event_stream = req.uri().path().ends_with("/events");
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
        .or(q.token.filter(|_| event_stream));
    let ok =
        presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(state.admin_token.as_bytes())));
    if !ok {
        return Err(AppError::Unauthorized);
    }
    Ok(next.run(req).await)
}

async fn ask<T>(
    state: &AppState,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, AppError> {
    let (tx, rx) = oneshot::channel();
    state
        .coordinator
        .send(make(tx))
        .await
        .map_err(|_| AppError::Internal("coordinator stopped".into()))?;
    rx.await
        .map_err(|_| AppError::Internal("coordinator dropped a request".into()))
}

/// `GET /api/admin/check`: 204 when the token is right (the admin page's login).
pub async fn check() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// `POST /api/admin/runs` with a [`RunConfig`] JSON body (`{}` = the demo defaults).
pub async fn create_run(
    State(state): State<AppState>,
    body: String,
) -> Result<(StatusCode, Json<RunSummary>), AppError> {
    let body = if body.trim().is_empty() {
        "{}"
    } else {
        body.as_str()
    };
    let config = RunConfig::from_json(body).map_err(AppError::Invalid)?;
    let summary = ask(&state, |reply| Command::CreateRun { config, reply }).await??;
    Ok((StatusCode::CREATED, Json(summary)))
}

/// `GET /api/admin/runs`
pub async fn list_runs(State(state): State<AppState>) -> Result<Json<Vec<RunSummary>>, AppError> {
    Ok(Json(
        ask(&state, |reply| Command::ListRuns { reply }).await??,
    ))
}

/// `GET /api/admin/runs/{id}`: config, status, every round's metrics, the privacy ledger.
pub async fn history(
    State(state): State<AppState>,
    Path(run_id): Path<u64>,
) -> Result<Json<RunHistory>, AppError> {
    let parts = ask(&state, |reply| Command::History { run_id, reply }).await??;
    let history = tokio::task::spawn_blocking(move || parts.into_history())
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Json(history))
}

/// `POST /api/admin/runs/{id}/{start|pause|resume|stop}`
pub async fn control(
    State(state): State<AppState>,
    Path((run_id, action)): Path<(u64, String)>,
) -> Result<Json<RunSummary>, AppError> {
    let action = RunAction::parse(&action).ok_or_else(|| {
        AppError::NotFound(format!(
            "no action {action:?}: expected start, pause, resume or stop"
        ))
    })?;
    Ok(Json(
        ask(&state, |reply| Command::Control {
            run_id,
            action,
            reply,
        })
        .await??,
    ))
}

/// `GET /api/admin/runs/{id}/model`: the latest global model as a tensor frame (the same
/// binary format clients receive; its round field is the checkpoint's round).
pub async fn model(
    State(state): State<AppState>,
    Path(run_id): Path<u64>,
) -> Result<Response, AppError> {
    let (server_round, values) = ask(&state, |reply| Command::Model { run_id, reply }).await??;
    let bytes = TensorFrame {
        kind: FrameKind::GlobalModel,
        server_round,
        values,
    }
    .encode()
    .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"tinycnn-run{run_id}-round{server_round}.fldp\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// `GET /api/admin/join`: the link (and QR code) for other devices on the network.
pub async fn join_info(State(state): State<AppState>) -> Json<JoinInfo> {
    let Some(addr) = state.listen else {
        return Json(JoinInfo {
            bind: "unknown".into(),
            lan_urls: Vec::new(),
        });
    };
    Json(JoinInfo {
        bind: addr.to_string(),
        lan_urls: lan_ip(addr.ip())
            .map(|ip| format!("http://{}/", std::net::SocketAddr::new(ip, addr.port())))
            .into_iter()
            .collect(),
    })
}

/// The address other devices reach this machine at, given the one it listens on: that one if
/// it is a real address, else (0.0.0.0) the source address of the default route, found by
/// "connecting" a UDP socket (which sends nothing); none on loopback.
fn lan_ip(listen: std::net::IpAddr) -> Option<std::net::IpAddr> {
    if listen.is_loopback() {
        return None;
    }
    if !listen.is_unspecified() {
        return Some(listen);
    }
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    socket.connect(("192.0.2.1", 9)).ok()?; // TEST-NET-1: never contacted
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// `GET /api/admin/clients`
pub async fn clients(State(state): State<AppState>) -> Result<Json<Vec<ClientInfo>>, AppError> {
    Ok(Json(
        ask(&state, |reply| Command::ListClients { reply }).await?,
    ))
}

/// `GET /api/admin/events`: server-sent events, one JSON [`protocol::admin::Event`] each.
pub async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = state.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let data = serde_json::to_string(&ev).unwrap_or_default();
                    return Some((Ok(SseEvent::default().data(data)), rx));
                }
                // A slow dashboard skips events; the history route has everything.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(skipped = n, "event stream subscriber lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[derive(Deserialize)]
pub struct ShardQuery {
    client_key: String,
}

/// `GET /api/runs/{run}/shards/{index}/{images|labels}?client_key=…`: a shard as an IDX file,
/// only to the client it was assigned to.
pub async fn shard(
    State(state): State<AppState>,
    Path((run_id, shard_index, part)): Path<(u64, u32, String)>,
    Query(q): Query<ShardQuery>,
) -> Result<Response, AppError> {
    if part != "images" && part != "labels" {
        return Err(AppError::NotFound(format!(
            "no shard part {part:?}: expected images or labels"
        )));
    }
    let Some(data) = state.data.clone() else {
        return Err(AppError::NotFound("this server holds no data set".into()));
    };
    let client_key = q.client_key;
    let (task, indices) = ask(&state, |reply| Command::Shard {
        run_id,
        shard_index,
        client_key,
        reply,
    })
    .await?
    .ok_or_else(|| {
        AppError::NotFound(format!(
            "shard {shard_index} of run {run_id} is not assigned to this client key"
        ))
    })?;
    let bytes = tokio::task::spawn_blocking(move || {
        let shard = data.shard(task, &indices).unwrap_or_default();
        let (images, labels) = learning::data::to_idx(&shard);
        if part == "images" { images } else { labels }
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::lan_ip;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn the_join_address_is_never_loopback() {
        assert_eq!(lan_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)), None);
        let lan = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 5));
        assert_eq!(lan_ip(lan), Some(lan));
        // 0.0.0.0: the default route's source address, if the machine has one.
        if let Some(ip) = lan_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) {
            assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
        }
    }
}
