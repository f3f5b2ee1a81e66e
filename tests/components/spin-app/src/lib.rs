//! A plain Spin app, written only against spin-sdk 7: what a Spin user
//! brings to payfn. Routes (under any prefix):
//!
//! - `GET .../variables/NAME`: the component variable NAME, or 404 with
//!   the error when undefined, 400 when the name is invalid.
//! - `PUT .../kv/LABEL/KEY` (body), `GET`, `DELETE`: the key-value store
//!   LABEL; `GET .../kv/LABEL` lists its keys, one per line; 403 when the
//!   component may not open LABEL.
//! - `GET .../outbound?url=URL`: fetches URL and answers with its status and
//!   body, or 502 with the error.

// spin-sdk's export macro only links for wasm32: elsewhere (the workspace's
// `cargo test`) this crate is empty.
#![cfg(target_family = "wasm")]

use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{IntoResponse, Method, Request, StatusCode};
use spin_sdk::key_value::{Error as KvError, Store};
use spin_sdk::variables::Error as VarError;

#[spin_sdk::http_service]
async fn handle(req: Request) -> impl IntoResponse {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let at = |word: &str| parts.iter().position(|p| *p == word);
    if let Some(i) = at("variables") {
        let name = parts.get(i + 1).copied().unwrap_or("");
        return match spin_sdk::variables::get(name).await {
            Ok(value) => (StatusCode::OK, value),
            Err(e @ VarError::InvalidName(_)) => (StatusCode::BAD_REQUEST, format!("{e:?}")),
            Err(e) => (StatusCode::NOT_FOUND, format!("{e:?}")),
        };
    }
    if let Some(i) = at("kv") {
        let label = parts.get(i + 1).copied().unwrap_or("default");
        let store = match Store::open(label).await {
            Ok(store) => store,
            Err(e @ KvError::AccessDenied) => return (StatusCode::FORBIDDEN, format!("{e:?}")),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}")),
        };
        let Some(key) = parts.get(i + 2).copied() else {
            return match store.get_keys().await.collect().await {
                Ok(keys) => (StatusCode::OK, keys.join("\n")),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}")),
            };
        };
        let outcome = if method == Method::PUT {
            let body = req.into_body().bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            store.set(key, &body).await.map(|()| (StatusCode::NO_CONTENT, String::new()))
        } else if method == Method::DELETE {
            store.delete(key).await.map(|()| (StatusCode::NO_CONTENT, String::new()))
        } else {
            match store.exists(key).await {
                Ok(false) => Ok((StatusCode::NOT_FOUND, String::new())),
                Ok(true) => store.get(key).await.map(|value| {
                    (StatusCode::OK, String::from_utf8_lossy(&value.unwrap_or_default()).into_owned())
                }),
                Err(e) => Err(e),
            }
        };
        return outcome.unwrap_or_else(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:?}")));
    }
    if at("outbound").is_some() {
        let url = query.strip_prefix("url=").unwrap_or("");
        return match spin_sdk::http::get(url).await {
            Ok(response) => {
                let status = response.status();
                let body = response.into_body().bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
            Err(e) => (StatusCode::BAD_GATEWAY, format!("{e:?}")),
        };
    }
    (StatusCode::NOT_FOUND, format!("no such route {path}"))
}
