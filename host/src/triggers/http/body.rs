//! Request bodies: read up to `[http] max_body_bytes`, and whatever an
//! answer left unread thrown away before the answer goes out.
//!
//! Many clients (Python's urllib, most simple ones) write the whole body
//! before they read the answer. A server that answers early (401, 404,
//! 429, 413 `body_too_large`) and closes on unread data resets the
//! connection under them: they report "connection reset by peer" or
//! "broken pipe" instead of the answer. So [`layer`] watches each request
//! body; what the layers and the step did not read is read and thrown away
//! (up to [`DRAIN_BYTES`], for at most [`DRAIN_TIME`]) before the answer
//! is sent, and the connection stays usable. A rest too large even for
//! that gets the answer with `Connection: close`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use super::errors::HostError;

/// How much of an unread body is read and thrown away.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// How long an unread body is read at most.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The body, whole, when it is at most `limit` bytes; 413
/// `body_too_large` past that (the rest is [`layer`]'s to drain).
pub async fn read(mut body: Body, limit: usize) -> Result<Bytes, HostError> {
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(invalid)?.into_data() else { continue };
        if read.len() + data.len() > limit {
            return Err(HostError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request bodies are limited to {limit} bytes"),
            ));
        }
        read.extend_from_slice(&data);
    }
    Ok(read.freeze())
}

fn invalid(e: axum::Error) -> HostError {
    HostError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("could not read the request body: {e}"))
}

/// The outermost layer: hands the request on with its body watched, and
/// drains what was left of it before the answer goes out.
pub async fn layer(request: Request, next: Next) -> Response {
    let unread = Arc::new(Mutex::new(None));
    let request = request.map(|body| Body::new(Watched { body: Some(body), unread: unread.clone() }));
    let mut response = next.run(request).await;
    let rest = unread.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(rest) = rest {
        if !drain(rest).await {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// Reads the rest of `body` and throws it away; `false` when it ended
/// neither within [`DRAIN_BYTES`] nor within [`DRAIN_TIME`] (or broke).
async fn drain(mut body: Body) -> bool {
    let to_the_end = async {
        let mut thrown = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            thrown += frame.data_ref().map_or(0, Bytes::len);
            if thrown > DRAIN_BYTES {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, to_the_end).await.unwrap_or(false)
}

/// A request body that, dropped before its end, hands itself back to
/// [`layer`] through `unread`.
struct Watched {
    body: Option<Body>,
    unread: Arc<Mutex<Option<Body>>>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.as_ref().map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(body) = self.body.take().filter(|b| !http_body::Body::is_end_stream(b)) {
            *self.unread.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> =
            sizes.iter().map(|n| Ok(Bytes::from(vec![b'x'; *n]))).collect();
        Body::from_stream(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_up_to_the_limit_is_read_whole() {
        assert_eq!(read(chunks(&[3, 4, 3]), 10).await.expect("within the limit").len(), 10);
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused() {
        let error = read(chunks(&[6, 6]), 10).await.expect_err("past the limit");
        assert_eq!((error.status, error.code), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    }

    #[tokio::test]
    async fn a_body_dropped_unread_is_handed_back_and_a_read_one_is_not() {
        let unread = Arc::new(Mutex::new(None));
        drop(Watched { body: Some(chunks(&[5, 5])), unread: unread.clone() });
        let rest = unread.lock().unwrap().take().expect("handed back");
        assert!(drain(rest).await, "drained to its end");

        let mut watched = Body::new(Watched { body: Some(Body::from("abc")), unread: unread.clone() });
        while watched.frame().await.is_some() {}
        drop(watched);
        assert!(unread.lock().unwrap().is_none(), "a body read to its end is not handed back");
    }

    #[tokio::test]
    async fn a_rest_too_large_to_drain_is_left() {
        assert!(!drain(chunks(&[DRAIN_BYTES, 1])).await);
    }
}
