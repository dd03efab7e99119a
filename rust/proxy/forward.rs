//! The bottom of the stack: the request goes to the app on the pooled client, and the
//! app's answer comes back streaming (S1). A `101` to a request that asked to switch
//! becomes a tunnel (`tunnel.rs`). When the app cannot be reached, the client gets `502`
//! with a short JSON body and no internal address (R3); when the client's own body broke or
//! stalled, it gets `400` or `408`, and the app's request was aborted, never ended as if
//! complete (S3).

use std::sync::Arc;
use std::time::Duration;

use http::header::{HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body::Body;
use serde_json::json;

use super::address::AppAddress;
use super::answer::{json as json_answer, refusal, Unreachable};
use super::body::{ProxyBody, TunnelHooks};
use super::conn::ConnState;
use super::inflight::ClientWait;
use super::layer::{Req, Resp};
use super::log::Log;
use super::pool::{Failure, Pool};
use super::tunnel;
use super::upload::{Broken, Fate, Outbound, Upload};

/// What forwarding needs, shared by every connection.
pub struct Shared {
    pub pool: Arc<Pool>,
    /// The app speaks HTTP/2.
    pub h2c: bool,
    pub address: AppAddress,
    pub body_timeout: Duration,
    pub tunnel_idle: Duration,
    pub log: Log,
}

/// The bottom of one connection's stack.
#[derive(Clone)]
pub struct Forward {
    pub shared: Arc<Shared>,
    pub conn: Arc<ConnState>,
}

type Answer = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Resp, std::convert::Infallible>> + Send>,
>;

impl tower::Service<Req> for Forward {
    type Response = Resp;
    type Error = std::convert::Infallible;
    type Future = Answer;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Req) -> Answer {
        let this = Arc::clone(&self.shared);
        // The headers layer kept `Upgrade` only on a request it will tunnel.
        let client_side = request
            .headers()
            .contains_key(UPGRADE)
            .then(|| hyper::upgrade::on(&mut request));
        let conn = Arc::clone(&self.conn);
        let version = request.version();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let asked = (parts.method.clone(), parts.uri.clone());
            parts.uri = this.address.uri(parts.uri.path_and_query(), this.h2c);
            parts.version = http::Version::HTTP_11; // the pool speaks the app's own
            let wait = parts.extensions.remove::<Arc<ClientWait>>();
            parts.extensions.clear();
            if !parts.headers.contains_key(HOST) {
                // An HTTP/1.0 client may name no host: the app's own, then.
                if let Ok(host) = HeaderValue::from_str(this.address.authority.as_str()) {
                    parts.headers.insert(HOST, host);
                }
            }
            if !this.h2c && body_of_unknown_length_on(&parts.method, &body) {
                // hyper's client sends such a body as no body at all (it assumes a GET has
                // none unless told): say it is chunked, so every byte the client sent
                // reaches the app (S1).
                parts
                    .headers
                    .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            }
            // A pooled connection the app closes just as a request is written to it fails
            // with no answer; a request that can be sent again without harm is, once.
            let again = (idempotent(&parts.method)
                && body.is_end_stream()
                && client_side.is_none())
            .then(|| {
                (
                    parts.method.clone(),
                    parts.uri.clone(),
                    parts.headers.clone(),
                )
            });
            let fate = Arc::new(Fate::default());
            let body = Upload::new(body, this.body_timeout, Arc::clone(&fate), wait);
            let upgrade = client_side.is_some();
            let mut result = this
                .pool
                .send(Request::from_parts(parts, Outbound::Client(body)), upgrade)
                .await;
            if let (Err(error), Some((method, uri, headers))) = (&result, again) {
                if closed_unanswered(error) {
                    let mut retry = Request::new(Outbound::Empty);
                    *retry.method_mut() = method;
                    *retry.uri_mut() = uri;
                    *retry.headers_mut() = headers;
                    result = this.pool.send(retry, false).await;
                }
            }
            let (mut response, link) = match result {
                Ok(answer) => answer,
                Err(error) => return Ok(this.failed(&fate, &error, &asked.0, &asked.1)),
            };
            // The client's version, whatever the app spoke (hyper frames it for the client).
            *response.version_mut() = version;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let Some(client_side) = client_side else {
                    return Ok(unreachable("the app switched protocols unasked", false));
                };

                let app_side = hyper::upgrade::on(&mut response);
                let hooks = Arc::new(TunnelHooks::default());
                tokio::spawn(tunnel::run(tunnel::Tunnel {
                    client: client_side,
                    app: app_side,
                    hooks: Arc::clone(&hooks),
                    conn,
                    idle: this.tunnel_idle,
                    log: this.log.clone(),
                }));
                let (mut parts, _) = response.into_parts();
                if version == http::Version::HTTP_2 {
                    super::extended_connect::to_h2_answer(&mut parts);
                }
                return Ok(Resp::from_parts(parts, ProxyBody::tunnel(hooks)));
            }
            Ok(response.map(|body| ProxyBody::app(body, link)))
        })
    }
}

impl Shared {
    /// The answer when the app's request failed: the client's fault (400, 408) or the
    /// app's (502, R3).
    fn failed(&self, fate: &Fate, error: &Failure, method: &Method, uri: &http::Uri) -> Resp {
        match fate.broken() {
            Some(Broken::TimedOut) => {
                return refusal(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body stalled for client_body_timeout_seconds\n",
                    http::Version::HTTP_11,
                )
            }
            Some(Broken::Malformed | Broken::Gone) => {
                return refusal(
                    StatusCode::BAD_REQUEST,
                    "the request body was malformed or cut short\n",
                    http::Version::HTTP_11,
                )
            }
            None => {}
        }
        let local = match error {
            Failure::Connect(io) => crate::probe::is_local(io),
            Failure::Http(error) => io_cause(error).is_some_and(crate::probe::is_local),
        };
        self.log.warn_limited(
            "unreachable",
            format!(
                "app unreachable for {method} {}: {}",
                uri.path_and_query().map_or("/", |p| p.as_str()),
                error
            ),
        );
        unreachable("runwarden could not reach the app; see its log", local)
    }
}

/// A body whose length is not known ahead (HTTP/1.1 chunked, HTTP/2 DATA frames without
/// `content-length`) on a method hyper's client would send it empty for.
fn body_of_unknown_length_on(method: &Method, body: &impl Body) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && !body.is_end_stream()
        && body.size_hint().exact().is_none()
}

/// RFC 9110 9.2.2: a method whose request can be repeated without a different effect.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The app's connection closed after the request was written and before any answer: a
/// pooled connection the app had just closed (its keep-alive timeout), not a broken app.
fn closed_unanswered(error: &Failure) -> bool {
    let Failure::Http(error) = error else {
        return false;
    };
    if error.is_incomplete_message() {
        return true;
    }
    io_cause(error).is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        )
    })
}

fn unreachable(detail: &str, local: bool) -> Resp {
    let mut response = json_answer(
        StatusCode::BAD_GATEWAY,
        &json!({"error": "app unreachable", "detail": detail}),
    );
    response.extensions_mut().insert(Unreachable { local });
    response
}

fn io_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = cause.source();
    }
    None
}
