//! The answers runwarden makes itself on the proxy port, and the marks responses carry
//! through the layers.

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, SERVER};
use http::{Response, StatusCode, Version};

use super::body::ProxyBody;
use crate::front::answer::{Answer, JSON, TEXT};

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

/// One of the core's own answers (`front::Answer`) as a response to a request of `version`.
pub fn from(decided: Answer, version: Version) -> Response<ProxyBody> {
    let mut response = answer(decided.status, decided.content_type, decided.body);
    for (name, value) in decided.headers {
        response.headers_mut().insert(name, value);
    }
    if decided.close {
        close(&mut response, version);
    }
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
