//! The layer of gateway checks (H5): a request carrying the check header from a trusted
//! peer is a gateway's request for a check, answered here with the check's outcome and
//! never forwarded. From any other peer the header is removed and the request goes on as
//! an ordinary one, so no client can turn a slow moment of the app into checks that count.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::StatusCode;
use ipnet::IpNet;
use pin_project_lite::pin_project;
use serde_json::json;
use tokio::sync::oneshot;

use super::answer::json as json_answer;
use super::conn::ConnState;
use super::layer::{layer, Req, Resp};
use super::log::Log;
use crate::runner::{CheckWait, RunnerHandle};
use crate::status::outcome_json;
use crate::verdict::{Outcome, Trigger};

/// The peers whose check header is a gateway's request (`--check-trusted-sources`).
#[derive(Clone, Debug)]
pub struct Trusted(Arc<[IpNet]>);

impl Trusted {
    pub fn new(networks: &[String]) -> Trusted {
        Trusted(
            networks
                .iter()
                .filter_map(|n| crate::setting::parse_network(n))
                .collect(),
        )
    }

    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&peer))
    }
}

layer! {
    /// H5.
    TriggerLayer => TriggerService {
        header: HeaderName,
        trusted: Trusted,
        runner: RunnerHandle,
        conn: Arc<ConnState>,
        log: Log,
        warned: Arc<AtomicBool>,
    }
    future TriggerFuture<S::Answer>
}

impl<S: super::layer::Inner> TriggerService<S> {
    fn handle(&mut self, mut request: Req) -> TriggerFuture<S::Answer> {
        if request.headers().contains_key(&self.header) {
            if !self.trusted.contains(self.conn.peer.ip()) {
                request.headers_mut().remove(&self.header);
            } else {
                self.behind_a_front_proxy(&request);
                return match self.runner.trigger_and_wait(Trigger::Gateway) {
                    CheckWait::Latest(outcome) => TriggerFuture::Now {
                        response: Some(Box::new(answer(&outcome))),
                    },
                    CheckWait::Pending(outcome) => TriggerFuture::Check { outcome },
                };
            }
        }
        TriggerFuture::Pass {
            inner: self.inner.call(request),
        }
    }
}

impl<S> TriggerService<S> {
    /// Trust is the peer's address: a front proxy on this host (nginx, Envoy) makes every
    /// client behind it a loopback peer, so every client is trusted. Said once, when a
    /// trusted loopback peer's check request shows a front proxy's header.
    fn behind_a_front_proxy(&self, request: &Req) {
        if self.conn.peer.ip().is_loopback()
            && request.headers().contains_key(X_FORWARDED_FOR)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            self.log.warn(format!(
                "a check request ({}) came from {} with X-Forwarded-For: a front proxy on \
                 this host forwards clients as loopback peers, and loopback is trusted, so \
                 every client behind it can trigger checks; set --check-trusted-sources to \
                 the gateway's own address (README: security model)",
                self.header,
                self.conn.peer.ip()
            ));
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pin_project! {
    /// The inner service's answer, or the check's.
    #[project = TriggerProj]
    pub enum TriggerFuture<F> {
        Pass { #[pin] inner: F },
        Now { response: Option<Box<Resp>> },
        Check { #[pin] outcome: oneshot::Receiver<Outcome> },
    }
}

impl<F> Future for TriggerFuture<F>
where
    F: Future<Output = Result<Resp, std::convert::Infallible>>,
{
    type Output = Result<Resp, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TriggerProj::Pass { inner } => inner.poll(cx),
            TriggerProj::Now { response } => {
                Poll::Ready(Ok(*response.take().expect("an answer is taken once")))
            }
            TriggerProj::Check { outcome } => {
                Poll::Ready(Ok(match std::task::ready!(outcome.poll(cx)) {
                    Ok(outcome) => answer(&outcome),
                    Err(_) => json_answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"passed": false, "reason": "the check was abandoned: the runner is starting over or stopping"}),
                    ),
                }))
            }
        }
    }
}

/// `200` and the check, or `503` and why it failed.
fn answer(outcome: &Outcome) -> Resp {
    let passed = outcome.report.passed();
    let mut body = json!({"passed": passed, "check": outcome_json(outcome)});
    if !passed {
        body["reason"] = match &outcome.report.error {
            Some(error) => json!(error),
            None => json!(format!(
                "health check answered {}",
                outcome.report.status.unwrap_or(0)
            )),
        };
    }
    let status = if passed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_answer(status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h5_trusted_sources_match_networks_and_mapped_addresses() {
        let trusted = Trusted::new(&["127.0.0.0/8".into(), "::1/128".into()]);
        assert!(trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(trusted.contains("::ffff:127.0.0.2".parse().unwrap()));
        assert!(trusted.contains("::1".parse().unwrap()));
        assert!(!trusted.contains("10.0.0.1".parse().unwrap()));
        assert!(!Trusted::new(&[]).contains("127.0.0.1".parse().unwrap()));
    }
}
