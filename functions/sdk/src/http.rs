//! One buffered request in, one JSON response out, over `wasi:http`.

use crate::bindings::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use crate::bindings::wasi::io::streams::StreamError;
use crate::error::ApiError;

/// Header carrying the authenticated merchant id; set only by the host.
pub const MERCHANT_HEADER: &str = "payfn-merchant-id";
/// Header carrying the host's request id.
pub const REQUEST_ID_HEADER: &str = "payfn-request-id";
/// Prefix of the headers carrying the route's path parameters.
pub const PARAM_HEADER_PREFIX: &str = "payfn-param-";

/// Largest chunk `blocking-write-and-flush` accepts.
const WRITE_CHUNK: usize = 4096;

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

    fn read(request: IncomingRequest) -> Result<Self, ApiError> {
        let method = match request.method() {
            Method::Get => "GET".to_string(),
            Method::Post => "POST".to_string(),
            Method::Put => "PUT".to_string(),
            Method::Delete => "DELETE".to_string(),
            Method::Patch => "PATCH".to_string(),
            Method::Head => "HEAD".to_string(),
            Method::Options => "OPTIONS".to_string(),
            Method::Connect => "CONNECT".to_string(),
            Method::Trace => "TRACE".to_string(),
            Method::Other(other) => other,
        };
        let path = request.path_with_query().unwrap_or_default();
        let headers = request
            .headers()
            .entries()
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), String::from_utf8(v).ok()?)))
            .collect();
        let body = read_body(&request)?;
        Ok(Self { method, path, headers, body })
    }
}

fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, ApiError> {
    let unreadable = || ApiError::internal("request body unreadable");
    let body = request.consume().map_err(|()| unreadable())?;
    let mut bytes = Vec::new();
    {
        // The stream is a child of the body and must be dropped first.
        let stream = body.stream().map_err(|()| unreadable())?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => return Err(unreadable()),
            }
        }
    }
    drop(body);
    Ok(bytes)
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

    fn send(self, out: ResponseOutparam) {
        let headers = Fields::new();
        // Only fails for forbidden or malformed header names; this one is neither.
        let _ = headers.append("content-type", b"application/json");
        if let Some(build) = BUILD_ID {
            let _ = headers.append("build-id", build.as_bytes());
        }
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(self.status);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(out, Ok(response));
        if let Ok(stream) = body.write() {
            for chunk in self.body.chunks(WRITE_CHUNK) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    // The caller went away; nothing left to tell anyone.
                    return;
                }
            }
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

/// Reads the request, runs `handler` and sends its response. Errors the
/// handler returns become the API.md envelope.
pub fn serve(
    request: IncomingRequest,
    out: ResponseOutparam,
    handler: fn(&Request) -> Result<Response, ApiError>,
) {
    let response = match Request::read(request) {
        Ok(request) => handler(&request).unwrap_or_else(|e| {
            if e.status >= 500 {
                // The caller sees a generic envelope; operators need the detail.
                crate::log::error(&format!("{} {}: {}", e.status, e.code, e.message));
            }
            e.to_response(request.request_id())
        }),
        Err(e) => e.to_response(""),
    };
    response.send(out);
}

/// Answers 404 on a component that serves no HTTP route.
pub fn refuse(out: ResponseOutparam) {
    ApiError::not_found("route_not_found", "this component serves no HTTP route").to_response("").send(out);
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
