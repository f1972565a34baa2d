//! The federated client: the session a browser tab and a headless simulated client both run,
//! and the wasm-bindgen exports for JavaScript hosts.
//!
//! # Layout
//!
//! * [`session`]: the client session state machine (sans-IO): messages in, actions out.
//! * [`secure`]: a member's side of a secure-aggregation round, inside the session.
//! * [`browser`]: the Web Worker transport (gloo-net) the client page runs (feature `browser`).
//! * [`native`]: tokio transport for simulated clients (feature `native`, not on wasm32).
//! * [`bench`]: training-step throughput measured inside a JS host.
//! * [`attack`]: hostile simulated clients (feature `native`).

// No unwrap outside tests: bad input gets an error, not a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
pub mod attack;
pub mod bench;
#[cfg(all(feature = "browser", target_arch = "wasm32"))]
pub mod browser;
#[cfg(all(feature = "native", not(target_arch = "wasm32")))]
pub mod native;
pub mod secure;
pub mod session;

pub use session::{Action, Notice, Session, SessionOptions};

/// The HTTP origin of a socket URL (`ws://host:port/ws` → `http://host:port`, `wss` → `https`):
/// where the shard files are downloaded from.
pub fn http_origin(ws_url: &str) -> Result<String, String> {
    let bad = || format!("server URL {ws_url:?}: expected ws://host:port/path or wss://…");
    let (scheme, rest) = if let Some(rest) = ws_url.strip_prefix("ws://") {
        ("http", rest)
    } else if let Some(rest) = ws_url.strip_prefix("wss://") {
        ("https", rest)
    } else {
        return Err(bad());
    };
    let authority = rest
        .split('/')
        .next()
        .filter(|a| !a.is_empty())
        .ok_or_else(bad)?;
    Ok(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn origin_from_socket_url() {
        assert_eq!(
            super::http_origin("ws://127.0.0.1:3000/ws").unwrap(),
            "http://127.0.0.1:3000"
        );
        assert_eq!(
            super::http_origin("wss://fl.example/ws").unwrap(),
            "https://fl.example"
        );
        assert!(
            super::http_origin("http://x/ws")
                .unwrap_err()
                .contains("expected ws://")
        );
        assert!(super::http_origin("ws:///ws").is_err());
    }
}
