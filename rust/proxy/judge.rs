//! The layer that judges the app's answers, once (R1, R4, H6): a `503` drains the runner
//! before it is forwarded, so no request admitted after it reaches the app (R1, D1); a
//! `500`, `502` or `504` (an unreachable app's `502` included, R3) asks for one extra check
//! (R4); the check header on an answer is removed and asks for a manual check once the
//! answer has been sent (H6). gRPC's statuses are judged as `grpc.rs` maps them, from the
//! head of a trailers-only answer or from the trailers, before they reach the client.

use bytes::Bytes;
use http::header::HeaderName;
use http_body::Frame;

use super::answer::{Own, Unreachable};
use super::body::{End, Hook};
use super::grpc;
use super::layer::{layer, Post, Req, Resp, Then};
use crate::runner::RunnerHandle;
use crate::verdict::Reason;

layer! {
    /// R1, R4, H6.
    JudgeLayer => JudgeService { runner: RunnerHandle, header: HeaderName }
    future Then<S::Answer, Judge>
}

impl<S: super::layer::Inner> JudgeService<S> {
    fn handle(&mut self, request: Req) -> Then<S::Answer, Judge> {
        let judge = Judge {
            runner: self.runner.clone(),
            header: self.header.clone(),
        };
        Then::later(self.inner.call(request), judge)
    }
}

/// The judgement of one answer.
pub struct Judge {
    runner: RunnerHandle,
    header: HeaderName,
}

impl Post for Judge {
    fn post(self, mut response: Resp) -> Resp {
        let Judge { runner, header } = self;
        if let Some(unreachable) = response.extensions().get::<Unreachable>() {
            if !unreachable.local {
                runner.response(502); // R3, R4: a dead app is noticed at once
            }
            return response;
        }
        if response.extensions().get::<Own>().is_some() {
            return response;
        }
        runner.response(response.status().as_u16()); // R1, R4
        if grpc::is_grpc(response.headers()) {
            match grpc::status(response.headers()) {
                Some(code) => judge_grpc(&runner, code),
                None => response
                    .body_mut()
                    .hook(Box::new(GrpcTrailers(runner.clone()))),
            }
        }
        if response.headers_mut().remove(&header).is_some() {
            response.body_mut().hook(Box::new(ManualCheck(runner)));
        }
        response
    }
}

fn judge_grpc(runner: &RunnerHandle, code: u32) {
    match grpc::judged_as(code) {
        Some(503) => {
            let detail = format!(
                "the app answered gRPC status {} ({code})",
                grpc::code_name(code)
            );
            runner.drain(Reason::App503, detail);
        }
        Some(status) => {
            runner.response(status);
        }
        None => {}
    }
}

/// R1, R4 on a gRPC answer's trailers, as they pass.
struct GrpcTrailers(RunnerHandle);

impl Hook for GrpcTrailers {
    fn frame(&mut self, frame: &Frame<Bytes>) {
        if let Some(code) = frame.trailers_ref().and_then(grpc::status) {
            judge_grpc(&self.0, code);
        }
    }
}

/// H6: a check once the answer is sent, or broke off, or was dropped.
struct ManualCheck(RunnerHandle);

impl Hook for ManualCheck {
    fn ended(&mut self, _end: End) {
        self.0.manual();
    }
}
