//! The answers runwarden makes itself, whatever the front: a request refused while the
//! runner drains (D1, D6, Q6), one the door cannot take (Q2), a gateway's check (H5), a
//! request past its timeout (Q3). Each is decided and worded here once; the proxy turns it
//! into a hyper response (`proxy/answer.rs`), the embedded front into ASGI messages.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::StatusCode;
use serde_json::json;

use crate::door::Refusal;
use crate::status::outcome_json;
use crate::verdict::{Outcome, Verdict};

/// Names the reason a draining runner refused a request (D1).
pub const REASON_HEADER: HeaderName = HeaderName::from_static("x-runwarden-draining");
/// Why runwarden refused a request it could not take now (Q2).
pub const OVERLOADED_HEADER: HeaderName = HeaderName::from_static("x-runwarden-overloaded");
/// What refused clients are told: another runner should take the request at once.
pub const RETRY_AFTER_SECONDS: HeaderValue = HeaderValue::from_static("1");

pub const JSON: HeaderValue = HeaderValue::from_static("application/json");
pub const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// One of runwarden's own answers: it never reached the app.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: HeaderValue,
    /// Besides the content type.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// The connection should end after it (a drain's refusal: the client goes elsewhere).
    pub close: bool,
}

impl Answer {
    fn json(status: StatusCode, value: &serde_json::Value) -> Answer {
        Answer {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body: Bytes::from(value.to_string()),
            close: false,
        }
    }

    fn text(status: StatusCode, body: &'static str) -> Answer {
        Answer {
            status,
            content_type: TEXT,
            headers: Vec::new(),
            body: Bytes::from_static(body.as_bytes()),
            close: false,
        }
    }

    /// `503` with `Retry-After`: the gateway retries it elsewhere.
    fn retry_elsewhere(mut self) -> Answer {
        self.status = StatusCode::SERVICE_UNAVAILABLE;
        self.headers.push((RETRY_AFTER, RETRY_AFTER_SECONDS));
        self
    }

    /// D1, D6, Q6: the runner drains; `detail` says how the request met the drain (empty:
    /// the verdict's own detail). Without a verdict (a drain that ended, K2), still a 503.
    pub fn draining(verdict: Option<&Verdict>, detail: &str) -> Answer {
        let Some(verdict) = verdict else {
            let body = if detail.is_empty() {
                json!({"error": "runner is draining"})
            } else {
                json!({"error": "runner is draining", "detail": detail})
            };
            return Answer::json(StatusCode::SERVICE_UNAVAILABLE, &body).retry_elsewhere();
        };
        let body = json!({
            "error": "runner is draining",
            "reason": verdict.reason.as_str(),
            "detail": if detail.is_empty() { verdict.detail.as_str() } else { detail },
        });
        let mut answer = Answer::json(StatusCode::SERVICE_UNAVAILABLE, &body).retry_elsewhere();
        answer.headers.push((
            REASON_HEADER,
            HeaderValue::from_static(verdict.reason.as_str()),
        ));
        answer.close = true;
        answer
    }

    /// Q2, Q6: the door refused the request.
    pub fn overloaded(why: Refusal, verdict: Option<&Verdict>) -> Answer {
        let detail = match why {
            Refusal::Draining => {
                return Answer::draining(
                    verdict,
                    "the runner started draining while the request waited for a place at \
                     the app; it never reached the app: retry it on another runner",
                )
            }
            Refusal::QueueFull => {
                "every place at the app and in its queue is taken (max_concurrency, max_queue)"
            }
            Refusal::QueueTimeout => "no place at the app came free within queue_timeout_seconds",
        };
        let body = json!({
            "error": "runner is overloaded",
            "reason": why.as_str(),
            "detail": detail,
        });
        let mut answer = Answer::json(StatusCode::SERVICE_UNAVAILABLE, &body).retry_elsewhere();
        answer
            .headers
            .push((OVERLOADED_HEADER, HeaderValue::from_static(why.as_str())));
        answer
    }

    /// D6: a request still in flight at the drain's deadline.
    pub fn past_the_drain(verdict: Option<&Verdict>) -> Answer {
        Answer::draining(
            verdict,
            "the request was still in flight when the drain timeout ended; retry it on \
             another runner",
        )
    }

    /// H5: `200` and the check, or `503` and why it failed; None: the check was abandoned
    /// (the runner starts over or stops).
    pub fn check(outcome: Option<&Outcome>) -> Answer {
        let Some(outcome) = outcome else {
            return Answer::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"passed": false, "reason": "the check was abandoned: the runner is starting over or stopping"}),
            );
        };
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
        Answer::json(status, &body)
    }

    /// Q3: the app did not answer within `request_timeout_seconds`.
    pub fn timed_out() -> Answer {
        Answer::text(
            StatusCode::GATEWAY_TIMEOUT,
            "the app did not answer within request_timeout_seconds\n",
        )
    }

    /// Q2: the client left while its request waited (it will not read this; 499 is what the
    /// metrics and the access log count it as).
    pub fn gone() -> Answer {
        Answer::text(
            StatusCode::from_u16(499).expect("a status"),
            "the client left while its request waited for the app\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Reason;
    use std::time::Duration;

    #[test]
    fn d1_a_draining_refusal_says_the_reason_and_to_retry_elsewhere() {
        let verdict = Verdict {
            reason: Reason::App503,
            detail: "the app answered 503".into(),
            age: Duration::ZERO,
        };
        let answer = Answer::draining(Some(&verdict), "");
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.close);
        assert!(answer.headers.contains(&(RETRY_AFTER, RETRY_AFTER_SECONDS)));
        assert!(answer
            .headers
            .contains(&(REASON_HEADER, HeaderValue::from_static("app_503"))));
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["detail"], "the app answered 503");
    }

    #[test]
    fn q2_an_overloaded_refusal_names_why_and_a_draining_one_is_the_drains() {
        let full = Answer::overloaded(Refusal::QueueFull, None);
        assert!(full
            .headers
            .contains(&(OVERLOADED_HEADER, HeaderValue::from_static("queue_full"))));
        let draining = Answer::overloaded(Refusal::Draining, None);
        assert!(!draining.headers.iter().any(|(n, _)| n == OVERLOADED_HEADER));
        assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
