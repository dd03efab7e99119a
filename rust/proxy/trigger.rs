//! The layer of gateway checks (H5): a request carrying the check header from a trusted
//! peer is a gateway's request for a check, answered here with the check's outcome and
//! never forwarded. From any other peer the header is removed and the request goes on as
//! an ordinary one, so no client can turn a slow moment of the app into checks that count.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderName;
use http::StatusCode;
use ipnet::IpNet;
use serde_json::json;

use super::answer::json as json_answer;
use super::conn::ConnState;
use super::layer::{layer, ready, Answer, Req, Resp};
use crate::checker::{CheckWait, CheckerHandle};
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
    TriggerLayer => TriggerService { header: HeaderName, trusted: Trusted, checker: CheckerHandle }
}

impl<S: super::layer::Inner> TriggerService<S> {
    fn handle(&mut self, mut request: Req) -> Answer {
        if !request.headers().contains_key(&self.header) {
            return self.inner.call(request);
        }
        let trusted = request
            .extensions()
            .get::<Arc<ConnState>>()
            .is_some_and(|conn| self.trusted.contains(conn.peer.ip()));
        if !trusted {
            request.headers_mut().remove(&self.header);
            return self.inner.call(request);
        }
        match self.checker.trigger_and_wait(Trigger::Gateway) {
            CheckWait::Latest(outcome) => ready(answer(&outcome)),
            CheckWait::Pending(outcome) => Box::pin(async move {
                Ok(match outcome.await {
                    Ok(outcome) => answer(&outcome),
                    Err(_) => json_answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"passed": false, "reason": "the check was abandoned: the runner is starting over or stopping"}),
                    ),
                })
            }),
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
