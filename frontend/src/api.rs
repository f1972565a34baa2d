//! The admin API over fetch (same origin: the axum server, or `trunk serve`'s proxy).

use gloo_net::http::{Request, RequestBuilder, Response};
use serde::de::DeserializeOwned;

/// A failed admin call as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status (0: the server could not be reached).
    pub status: u16,
    pub message: String,
    /// The config field the server named (422).
    pub field: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{} (HTTP {})", self.message, self.status)
        }
    }
}

fn unreachable(e: impl std::fmt::Display) -> ApiError {
    ApiError {
        status: 0,
        message: format!("the server could not be reached: {e}"),
        field: None,
    }
}

fn authed(req: RequestBuilder, token: &str) -> RequestBuilder {
    req.header("Authorization", &format!("Bearer {token}"))
}

/// Turns an error response (`{error, field}` JSON from the server) into an [`ApiError`].
async fn check(res: Response) -> Result<Response, ApiError> {
    if res.ok() {
        return Ok(res);
    }
    let status = res.status();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    Err(ApiError {
        status,
        message: body["error"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| res.status_text()),
        field: body["field"].as_str().map(String::from),
    })
}

pub async fn get<T: DeserializeOwned>(token: &str, path: &str) -> Result<T, ApiError> {
    let res = authed(Request::get(path), token)
        .send()
        .await
        .map_err(unreachable)?;
    check(res).await?.json().await.map_err(unreachable)
}

/// `GET /api/admin/check`: whether the token is accepted.
pub async fn check_token(token: &str) -> Result<(), ApiError> {
    let res = authed(Request::get("/api/admin/check"), token)
        .send()
        .await
        .map_err(unreachable)?;
    check(res).await.map(|_| ())
}

pub async fn post<T: DeserializeOwned>(
    token: &str,
    path: &str,
    body: Option<String>,
) -> Result<T, ApiError> {
    let req = authed(Request::post(path), token);
    let res = match body {
        Some(b) => {
            req.header("Content-Type", "application/json")
                .body(b)
                .map_err(unreachable)?
                .send()
                .await
        }
        None => req.send().await,
    }
    .map_err(unreachable)?;
    check(res).await?.json().await.map_err(unreachable)
}

/// Raw bytes of an authenticated GET (the model download).
pub async fn get_bytes(token: &str, path: &str) -> Result<Vec<u8>, ApiError> {
    let res = authed(Request::get(path), token)
        .send()
        .await
        .map_err(unreachable)?;
    check(res).await?.binary().await.map_err(unreachable)
}

/// Offers `bytes` to the user as a file download.
pub fn download(name: &str, mime: &str, bytes: &[u8]) -> Result<(), String> {
    use wasm_bindgen::JsCast;
    let err = |e: wasm_bindgen::JsValue| format!("download failed: {e:?}");
    let array = js_sys::Array::new();
    array.push(&js_sys::Uint8Array::from(bytes));
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(mime);
    let blob =
        web_sys::Blob::new_with_u8_array_sequence_and_options(&array, &options).map_err(err)?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(err)?;
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?;
    let a: web_sys::HtmlAnchorElement = document.create_element("a").map_err(err)?.unchecked_into();
    a.set_href(&url);
    a.set_download(name);
    a.click();
    // Some browsers read the blob after `click` returns: free it a little later.
    leptos::prelude::set_timeout(
        move || {
            let _freed = web_sys::Url::revoke_object_url(&url);
        },
        std::time::Duration::from_secs(10),
    );
    Ok(())
}
