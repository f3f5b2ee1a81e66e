//! One buffered request in, one JSON response out, over spin-sdk's HTTP
//! types (`wasi:http/handler@0.3.0`).

use bytes::Bytes;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{FullBody, HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::error::ApiError;

/// Header carrying the authenticated merchant id; set only by the host.
pub const MERCHANT_HEADER: &str = "payfn-merchant-id";
/// Header carrying the host's request id.
pub const REQUEST_ID_HEADER: &str = "payfn-request-id";
/// Prefix of the headers carrying the route's path parameters.
pub const PARAM_HEADER_PREFIX: &str = "payfn-param-";

/// A request as a step sees it: fully read, headers lower-cased.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of `name` (lower case), if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The host's request id, for error envelopes and logs.
    pub fn request_id(&self) -> &str {
        self.header(REQUEST_ID_HEADER).unwrap_or("")
    }

    /// The merchant the host authenticated; absent only if the route is
    /// served without authentication, which no payment route is.
    pub fn merchant_id(&self) -> Result<i64, ApiError> {
        self.header(MERCHANT_HEADER)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ApiError::internal("the host did not pass an authenticated merchant"))
    }

    /// A path parameter of the route, e.g. `id` for `/payments/:id/capture`.
    pub fn param(&self, name: &str) -> Result<&str, ApiError> {
        let header = format!("{PARAM_HEADER_PREFIX}{name}");
        self.header(&header).ok_or_else(|| ApiError::internal(format!("route has no `{name}` parameter")))
    }

    /// The first value of query parameter `name`, percent-decoding `%XX`
    /// and `+`.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.path.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
    }

    /// The W3C `traceparent` the host passed (the caller's, or a new one).
    pub fn traceparent(&self) -> Option<&str> {
        self.header("traceparent")
    }

    /// Fails with 405 unless the request uses `method`.
    pub fn require_method(&self, method: &str) -> Result<(), ApiError> {
        if self.method == method {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed())
        }
    }

    async fn read(request: spin_sdk::http::Request) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let method = parts.method.as_str().to_string();
        let path = parts.uri.path_and_query().map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        // Header names arrive lower-cased (the `http` crate's rule).
        let headers = parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = body.bytes().await.map_err(|_| ApiError::internal("request body unreadable"))?.to_vec();
        Ok(Self { method, path, headers, body })
    }
}

/// Set `PAYFN_BUILD_ID` when building (a commit, a CI run number) and every
/// response carries it as `build-id`: which build answered, beside the
/// host's `payfn-version` digest.
const BUILD_ID: Option<&str> = option_env!("PAYFN_BUILD_ID");

/// A JSON response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// `value` serialised as the body of a `status` response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        // Serialising a `Value` cannot fail: its map keys are strings.
        let body = serde_json::to_vec(value).unwrap_or_default();
        Self { status, body }
    }

    /// The response as spin-sdk answers it: status, headers, body.
    pub fn into_parts(self) -> (StatusCode, HeaderMap, FullBody<Bytes>) {
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("content-type"), HeaderValue::from_static("application/json"));
        if let Some(build) = BUILD_ID.and_then(|b| HeaderValue::from_str(b).ok()) {
            headers.insert(HeaderName::from_static("build-id"), build);
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, headers, FullBody::new(Bytes::from(self.body)))
    }
}

/// Reads the request, runs `handler` and answers with its response.
/// Errors the handler returns become the API.md envelope.
pub async fn serve(
    request: spin_sdk::http::Request,
    handler: fn(&Request) -> Result<Response, ApiError>,
) -> (StatusCode, HeaderMap, FullBody<Bytes>) {
    let response = match Request::read(request).await {
        Ok(request) => handler(&request).unwrap_or_else(|e| {
            if e.status >= 500 {
                // The caller sees a generic envelope; operators need the detail.
                crate::log::error(&format!("{} {}: {}", e.status, e.code, e.message));
            }
            e.to_response(request.request_id())
        }),
        Err(e) => e.to_response(""),
    };
    response.into_parts()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
