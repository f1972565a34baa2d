//! The federation server.
//!
//! # Layout
//!
//! * [`app`]: the axum router, built by a function so tests call it without a port.
//!
//! The round coordinator, strategies, client registry, admin API and store arrive with the
//! server issue; what is here is the app they plug into.

// No unwrap outside tests: bad input gets an error, not a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use axum::{Json, Router, routing::get};
use serde::Serialize;

/// What `GET /api/health` answers: enough for a client or an operator to check that it talks
/// to a compatible server before anything else.
#[derive(Debug, Serialize, PartialEq)]
pub struct Health {
    pub status: &'static str,
    pub protocol_version: u16,
    /// Parameters of the model this server federates (TinyCNN: 12 810).
    pub model_params: usize,
}

/// The server's router.
pub fn app() -> Router {
    Router::new().route("/api/health", get(health))
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        protocol_version: protocol::PROTOCOL_VERSION,
        model_params: learning::TinyCnnConfig::new().layout().num_params(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn health_reports_protocol_and_model() {
        let res = app()
            .oneshot(
                Request::get("/api/health")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(res.status(), StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["status"], "ok");
        assert_eq!(v["protocol_version"], 1);
        assert_eq!(v["model_params"], 12_810);
    }

    #[tokio::test]
    async fn unknown_route_is_404() {
        let res = app()
            .oneshot(
                Request::get("/api/nope")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
}
