//! The access log (`--access-log`): one line per request on the proxy port (client,
//! request line, status, duration), written by Python's log as `runwarden.access`, so the
//! JSON log format makes each part a field. 499: the client left before its answer.

use std::sync::Arc;
use std::time::Instant;

use super::body::{End, Hook};
use super::conn::ConnState;
use super::layer::{layer, Answer, Req};
use super::log::Log;
use crate::verdict::{AccessLine, Event};

layer! {
    /// One line per request.
    AccessLogLayer => AccessLogService { log: Log, on: bool }
}

impl<S: super::layer::Inner> AccessLogService<S> {
    fn handle(&mut self, request: Req) -> Answer {
        if !self.on {
            return self.inner.call(request);
        }
        let client = request
            .extensions()
            .get::<Arc<ConnState>>()
            .map(|conn| conn.peer.ip().to_string())
            .unwrap_or_default();
        let mut line = Line {
            log: self.log.clone(),
            began: Instant::now(),
            line: Some(AccessLine {
                client,
                method: request.method().to_string(),
                target: request
                    .uri()
                    .path_and_query()
                    .map_or_else(|| request.uri().to_string(), |p| p.to_string()),
                version: match request.version() {
                    http::Version::HTTP_10 => "1.0",
                    http::Version::HTTP_2 => "2",
                    _ => "1.1",
                },
                status: 499,
                duration: Default::default(),
            }),
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            if let Some(line) = &mut line.line {
                line.status = response.status().as_u16();
            }
            response.body_mut().hook(Box::new(line));
            Ok(response)
        })
    }
}

struct Line {
    log: Log,
    began: Instant,
    line: Option<AccessLine>,
}

impl Hook for Line {
    fn ended(&mut self, _end: End) {}
}

impl Drop for Line {
    fn drop(&mut self) {
        if let Some(mut line) = self.line.take() {
            line.duration = self.began.elapsed();
            self.log.event(Event::Access(line));
        }
    }
}
