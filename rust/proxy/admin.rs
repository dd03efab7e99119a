//! The admin port (SPEC A): `/livez`, `/readyz`, `/status`, `/metrics`, read-only, on its
//! own address; and `POST /canary` from trusted sources (G7). `/livez` and `/readyz` are answered from the runner's life as the core
//! publishes it, without Python and without a lock, so a busy or stuck interpreter never
//! fails a probe. The proxy port never routes here.
//!
//! While the proxy port refuses new clients at its connection cap, `/readyz` stays 200: the
//! app is healthy and each refused client is told to retry (503, `Retry-After`); failing
//! readiness then would let one flood take every runner out of its Service at once.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, SERVER};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::watch;

use super::answer::SERVER_NAME;
use super::body::ProxyBody;
use super::conn::ConnState;
use crate::lifecycle::Phase;
use crate::metrics::Metrics;
use crate::runner::LifeView;

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

pub struct AdminState {
    pub life: watch::Receiver<LifeView>,
    pub metrics: Arc<Metrics>,
    /// The `/status` document, rendered when asked.
    pub status: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// G7: ask the compute canary to run now; false when it is off.
    pub canary: Box<dyn Fn() -> bool + Send + Sync>,
    /// Who may ask (`--check-trusted-sources`, as for H5).
    pub trusted: crate::front::Trusted,
}

/// The admin port's service for one connection.
#[derive(Clone)]
pub struct Admin {
    pub state: Arc<AdminState>,
    /// The connection, whose timeouts count its requests as the proxy port's do.
    pub conn: Arc<ConnState>,
}

impl hyper::service::Service<Request<Incoming>> for Admin {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<ProxyBody>, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        // The head is in: the header timeout stops, and the connection is idle again once
        // the answer, made here at once, is handed over.
        let _active = self.conn.request_started();
        std::future::ready(Ok(self.answer(&request)))
    }
}

impl Admin {
    fn answer(&self, request: &Request<Incoming>) -> Response<ProxyBody> {
        let route = request.uri().path();
        if route == "/canary" {
            return self.canary(request);
        }
        if !matches!(route, "/livez" | "/readyz" | "/status" | "/metrics") {
            return respond(
                StatusCode::NOT_FOUND,
                TEXT,
                Bytes::from_static(b"not found\n"),
            );
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return not_allowed("GET, HEAD");
        }
        let state = &self.state;
        match route {
            "/livez" => {
                let life = state.life.borrow();
                match &life.verdict {
                    Some(verdict) if verdict.reason.replaces() => respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        TEXT,
                        format!("replacing: {}\n", verdict.reason.as_str()).into(),
                    ),
                    _ => respond(StatusCode::OK, TEXT, Bytes::from_static(b"ok\n")),
                }
            }
            "/readyz" => {
                let life = state.life.borrow();
                if life.phase == Phase::Ready {
                    return respond(StatusCode::OK, TEXT, Bytes::from_static(b"ready\n"));
                }
                let reason = life
                    .verdict
                    .as_ref()
                    .map_or("no health check has passed yet", |v| v.reason.as_str());
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    format!("{}: {reason}\n", life.state).into(),
                )
            }
            "/status" => respond(
                StatusCode::OK,
                HeaderValue::from_static("application/json"),
                (state.status)().to_string().into(),
            ),
            _ => respond(
                StatusCode::OK,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                state.metrics.render().into(),
            ),
        }
    }
}

impl Admin {
    /// G7: `POST /canary` from a trusted source runs the compute canary now; its result is in
    /// `/status` (`gpu.canary`), and a fatal one drains the runner as any GPU fault does.
    fn canary(&self, request: &Request<Incoming>) -> Response<ProxyBody> {
        if request.method() != Method::POST {
            return not_allowed("POST");
        }
        if !self.state.trusted.contains(self.conn.peer.ip()) {
            return respond(
                StatusCode::FORBIDDEN,
                TEXT,
                Bytes::from_static(b"not a trusted source (--check-trusted-sources)\n"),
            );
        }
        if (self.state.canary)() {
            respond(
                StatusCode::ACCEPTED,
                TEXT,
                Bytes::from_static(b"the canary runs now; its result will be in /status\n"),
            )
        } else {
            respond(
                StatusCode::CONFLICT,
                TEXT,
                Bytes::from_static(b"the compute canary is off (see /status gpu.canary)\n"),
            )
        }
    }
}

/// `405`, with the methods the route takes.
fn not_allowed(allow: &'static str) -> Response<ProxyBody> {
    let mut response = respond(
        StatusCode::METHOD_NOT_ALLOWED,
        TEXT,
        Bytes::from_static(b"method not allowed\n"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn respond(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(SERVER, SERVER_NAME);
    response
}
