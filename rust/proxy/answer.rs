//! The answers runwarden makes itself on the proxy port, and the marks responses carry
//! through the layers.

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER, SERVER};
use http::{Response, StatusCode, Version};

use super::body::ProxyBody;

/// A response runwarden made itself: it never reached the app (metrics' `source`).
#[derive(Debug, Clone, Copy)]
pub struct Own;

/// A 502 because the app could not be reached (R3); `local` if runwarden itself ran out of
/// something (S6) rather than the app being gone.
#[derive(Debug, Clone, Copy)]
pub struct Unreachable {
    pub local: bool,
}

pub const SERVER_NAME: HeaderValue = HeaderValue::from_static("runwarden");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
/// What refused clients are told: another runner should take the request at once.
pub const RETRY_AFTER_SECONDS: HeaderValue = HeaderValue::from_static("1");

pub fn answer(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(SERVER, SERVER_NAME);
    response.extensions_mut().insert(Own);
    response
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    answer(status, JSON, Bytes::from(value.to_string()))
}

pub fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    answer(status, TEXT, Bytes::from_static(body.as_bytes()))
}

/// A request refused before it reached the app; the connection ends after the answer, as
/// what follows on it cannot be trusted to be framed as the client meant.
pub fn refusal(status: StatusCode, why: &'static str, version: Version) -> Response<ProxyBody> {
    let mut response = text(status, why);
    close(&mut response, version);
    response
}

/// `503` with `Retry-After`: the gateway retries it elsewhere.
pub fn retry_elsewhere(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
        .headers_mut()
        .insert(RETRY_AFTER, RETRY_AFTER_SECONDS);
    response
}

/// `Connection: close` on an answer to an HTTP/1 request (HTTP/2 has no such header; its
/// connections end with GOAWAY).
pub fn close<B>(response: &mut Response<B>, version: Version) {
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}
