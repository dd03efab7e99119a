//! The access log (`--access-log`): one line per request on the proxy port (client,
//! request line, status, duration), written by Python's log as `runwarden.access`, so the
//! JSON log format makes each part a field. 499: the client left before its answer.

use std::sync::Arc;
use std::time::Instant;

use super::body::Hook;
use super::conn::ConnState;
use super::layer::{layer, Post, Req, Resp, Then};
use super::log::Log;
use crate::verdict::{AccessLine, Event};

layer! {
    /// One line per request.
    AccessLogLayer => AccessLogService { log: Log, on: bool, conn: Arc<ConnState> }
    future Then<S::Answer, Option<Line>>
}

impl<S: super::layer::Inner> AccessLogService<S> {
    fn handle(&mut self, request: Req) -> Then<S::Answer, Option<Line>> {
        let line = self.on.then(|| Line {
            log: self.log.clone(),
            began: Instant::now(),
            line: Some(AccessLine {
                client: self.conn.peer.ip().to_string(),
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
        });
        Then::later(self.inner.call(request), line)
    }
}

/// The line of a head hyper could not parse and answered itself: no method or target can
/// be told, so they read `-`, as in nginx's log of such a request.
pub fn unparsed(conn: &ConnState, status: u16) -> AccessLine {
    AccessLine {
        client: conn.peer.ip().to_string(),
        method: "-".into(),
        target: "-".into(),
        version: "1.1",
        status,
        duration: Default::default(),
    }
}

impl<P: Post> Post for Option<P> {
    fn post(self, response: Resp) -> Resp {
        match self {
            Some(post) => post.post(response),
            None => response,
        }
    }
}

/// One request's line, written when its response ends (or the client leaves first).
pub struct Line {
    log: Log,
    began: Instant,
    line: Option<AccessLine>,
}

impl Post for Line {
    fn post(mut self, mut response: Resp) -> Resp {
        if let Some(line) = &mut self.line {
            line.status = response.status().as_u16();
        }
        response.body_mut().hook(Box::new(self));
        response
    }
}

impl Hook for Line {}

impl Drop for Line {
    fn drop(&mut self) {
        if let Some(mut line) = self.line.take() {
            line.duration = self.began.elapsed();
            self.log.event(Event::Access(line));
        }
    }
}
