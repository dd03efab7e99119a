//! One health check (SPEC H): a request to the app over loopback on a fresh connection, so
//! a connection the app dropped while idle can never fail a check.
//!
//! `--check-protocol http` sends `GET` (or `POST`) to the health path and passes on a 2xx;
//! over HTTP/1.1, or HTTP/2 with prior knowledge when the app speaks h2c. `grpc` asks
//! the standard gRPC health service (`grpc.health.v1.Health/Check`, as Kubernetes' gRPC probe
//! does) and passes on `SERVING`. The runner bounds every check by `timeout_seconds`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::error::Result;
use crate::proxy::address::AppAddress;
use crate::settings::{AppProtocol, CheckProtocol, HealthSettings, Method};
use crate::verdict::ProbeReport;

/// The most of a gRPC health answer read; the real one is a few bytes.
const GRPC_ANSWER_LIMIT: usize = 64 * 1024;
const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";
/// grpc.health.v1.HealthCheckResponse.ServingStatus
const SERVING: u64 = 1;

/// How checks reach the app: over loopback (the proxy, and any app behind it), or through
/// the app's own event loop inside its process (the embedded front, SPEC E4).
#[derive(Clone)]
pub enum Probe {
    Http(HttpProbe),
    InProcess(Arc<crate::embedded::check::AppChecks>),
}

impl Probe {
    /// What `/status` names as the check's target.
    pub fn url(&self) -> &str {
        match self {
            Probe::Http(http) => http.url(),
            Probe::InProcess(checks) => checks.url(),
        }
    }

    /// Send one check and wait for its answer (the caller bounds the wait).
    pub async fn run(&self) -> ProbeReport {
        match self {
            Probe::Http(http) => http.run().await,
            Probe::InProcess(checks) => checks.run().await,
        }
    }
}

/// Sends health checks to one app over loopback.
#[derive(Clone)]
pub struct HttpProbe {
    address: AppAddress,
    dial: String,
    url: String,
    path: String,
    method: Method,
    protocol: CheckProtocol,
    h2: bool,
    grpc_service: String,
}

impl HttpProbe {
    pub fn new(app_url: &str, settings: &HealthSettings, app: AppProtocol) -> Result<HttpProbe> {
        // The app's URL may end in a path prefix the app is mounted under: checks go to the
        // prefix plus the health path, as proxied requests go to the prefix plus theirs.
        let address = AppAddress::parse(app_url)?;
        let path = match settings.check_protocol {
            CheckProtocol::Http => format!("{}{}", address.prefix, settings.health_path),
            CheckProtocol::Grpc => GRPC_HEALTH_PATH.to_owned(),
        };
        Ok(HttpProbe {
            dial: address.dial(),
            url: format!("http://{}{path}", address.authority),
            path,
            address,
            method: settings.health_method,
            protocol: settings.check_protocol,
            h2: app == AppProtocol::H2c || settings.check_protocol == CheckProtocol::Grpc,
            grpc_service: settings.grpc_health_service.clone(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Send one check and wait for its answer (the caller bounds the wait).
    pub async fn run(&self) -> ProbeReport {
        let started = Instant::now();
        let result = self.ask().await;
        let latency = started.elapsed();
        match result {
            Ok((status, None)) => ProbeReport {
                status: Some(status),
                error: None,
                latency,
                local: false,
            },
            Ok((status, Some(error))) => ProbeReport {
                status: Some(status),
                error: Some(error),
                latency,
                local: false,
            },
            Err(failure) => ProbeReport {
                status: None,
                local: failure.local,
                error: Some(failure.message),
                latency,
            },
        }
    }

    /// The HTTP status, and for gRPC why the answer is not a pass.
    async fn ask(&self) -> std::result::Result<(u16, Option<String>), Failure> {
        let stream = TcpStream::connect(&self.dial)
            .await
            .map_err(Failure::connect)?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        let request = self.request();
        let response = if self.h2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(Failure::http)?;
            tokio::spawn(connection);
            sender.send_request(request).await.map_err(Failure::http)?
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(Failure::http)?;
            tokio::spawn(connection);
            sender.send_request(request).await.map_err(Failure::http)?
        };
        let status = response.status().as_u16();
        if self.protocol == CheckProtocol::Http {
            return Ok((status, None));
        }
        let headers = response.headers().clone();
        let collected = Limited::new(response.into_body(), GRPC_ANSWER_LIMIT)
            .collect()
            .await
            .map_err(|e| Failure::message(format!("reading the gRPC health answer: {e}")))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        Ok((
            status,
            grpc_verdict(status, &headers, &trailers, collected.to_bytes()),
        ))
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().uri(if self.h2 {
            self.url.as_str()
        } else {
            self.path.as_str()
        });
        builder = builder
            .header(http::header::USER_AGENT, "runwarden-health-check")
            .header(http::header::HOST, self.address.authority.as_str());
        match self.protocol {
            CheckProtocol::Http => {
                let method = match self.method {
                    Method::Get => http::Method::GET,
                    Method::Post => http::Method::POST,
                };
                builder.method(method).body(Full::default())
            }
            CheckProtocol::Grpc => builder
                .method(http::Method::POST)
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::TE, HeaderValue::from_static("trailers"))
                .body(Full::new(grpc_request(&self.grpc_service))),
        }
        .expect("a check's request is valid")
    }
}

/// Why a check got no answer; `local` if runwarden itself ran out of something (S6).
struct Failure {
    message: String,
    local: bool,
}

/// Errors that say runwarden itself ran out of something (S6), not that the app failed:
/// no file descriptor (EMFILE, ENFILE), no buffer or memory (ENOBUFS, ENOMEM), no free
/// local port (EADDRNOTAVAIL).
pub const LOCAL_ERRNOS: [i32; 5] = [
    libc::EMFILE,
    libc::ENFILE,
    libc::ENOBUFS,
    libc::ENOMEM,
    libc::EADDRNOTAVAIL,
];

pub fn is_local(error: &std::io::Error) -> bool {
    error
        .raw_os_error()
        .is_some_and(|e| LOCAL_ERRNOS.contains(&e))
}

impl Failure {
    fn message(message: String) -> Failure {
        Failure {
            message,
            local: false,
        }
    }

    fn connect(error: std::io::Error) -> Failure {
        if is_local(&error) {
            return Failure {
                message: format!("runwarden could not send the check: {error}"),
                local: true,
            };
        }
        Failure::message(match error.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            std::io::ErrorKind::ConnectionReset => "connection reset by the app".to_owned(),
            _ => format!("i/o error: {error}"),
        })
    }

    fn http(error: hyper::Error) -> Failure {
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::ConnectionReset {
                    return Failure::message("connection reset by the app".to_owned());
                }
            }
            source = cause.source();
        }
        if error.is_incomplete_message() {
            return Failure::message("the app closed the connection without answering".into());
        }
        Failure::message(format!("the app's answer is not HTTP: {error}"))
    }
}

/// A gRPC message: a 5-byte prefix (uncompressed, length) and `HealthCheckRequest`, whose
/// one field is `string service = 1`.
fn grpc_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed.into()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint(buf: &mut Bytes) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if !buf.has_remaining() {
            return None;
        }
        let byte = buf.get_u8();
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// None if the answer is `SERVING`; else what it said instead.
fn grpc_verdict(
    status: u16,
    headers: &http::HeaderMap,
    trailers: &http::HeaderMap,
    body: Bytes,
) -> Option<String> {
    if status != 200 {
        return Some(format!("the gRPC health check got HTTP status {status}"));
    }
    let code = trailers
        .get("grpc-status")
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    match code {
        Some(0) => {}
        Some(code) => {
            let message = trailers
                .get("grpc-message")
                .or_else(|| headers.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Some(format!(
                "grpc-status {code} ({}){}{message}",
                crate::proxy::grpc::code_name(code),
                if message.is_empty() { "" } else { ": " }
            ));
        }
        None => return Some("the gRPC health answer has no grpc-status".to_owned()),
    }
    match serving_status(body) {
        Some(SERVING) => None,
        Some(other) => Some(format!(
            "the gRPC health service says {}",
            status_name(other)
        )),
        None => Some("the gRPC health answer is not a HealthCheckResponse".to_owned()),
    }
}

/// `HealthCheckResponse.status` (field 1, a varint) from one gRPC message.
fn serving_status(mut body: Bytes) -> Option<u64> {
    if body.len() < 5 || body[0] != 0 {
        return None; // compressed or truncated: not what a health server sends
    }
    body.advance(1);
    let length = body.get_u32() as usize;
    if body.len() < length {
        return None;
    }
    let mut message = body.split_to(length);
    let mut status = 0; // proto3: an absent field is its zero, UNKNOWN
    while message.has_remaining() {
        let key = varint(&mut message)?;
        match key & 7 {
            0 => {
                let value = varint(&mut message)?;
                if key >> 3 == 1 {
                    status = value;
                }
            }
            2 => {
                let len = varint(&mut message)? as usize;
                if message.remaining() < len {
                    return None;
                }
                message.advance(len);
            }
            _ => return None,
        }
    }
    Some(status)
}

fn status_name(status: u64) -> String {
    match status {
        0 => "UNKNOWN".to_owned(),
        1 => "SERVING".to_owned(),
        2 => "NOT_SERVING".to_owned(),
        3 => "SERVICE_UNKNOWN".to_owned(),
        other => format!("status {other}"),
    }
}

/// How long a check may take before the runner gives up on it, with a margin for the
/// runner's own deadline to come first.
pub fn bound(timeout: Duration) -> Duration {
    timeout + Duration::from_millis(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_health_messages_encode_and_decode() {
        assert_eq!(&grpc_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&grpc_request("m")[..], &[0, 0, 0, 0, 3, 0x0a, 1, b'm']);
        let serving = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1]);
        assert_eq!(serving_status(serving), Some(SERVING));
        let not_serving = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 2]);
        assert_eq!(serving_status(not_serving), Some(2));
        assert_eq!(
            serving_status(Bytes::from_static(&[0, 0, 0, 0, 0])),
            Some(0)
        );
        assert_eq!(serving_status(Bytes::from_static(&[1, 0, 0, 0, 0])), None);
    }

    #[test]
    fn a_grpc_answer_passes_only_when_serving_with_status_ok() {
        let mut ok = http::HeaderMap::new();
        ok.insert("grpc-status", HeaderValue::from_static("0"));
        let empty = http::HeaderMap::new();
        let body = |s: u8| Bytes::from(vec![0, 0, 0, 0, 2, 0x08, s]);
        assert_eq!(grpc_verdict(200, &empty, &ok, body(1)), None);
        assert_eq!(
            grpc_verdict(200, &empty, &ok, body(2)).unwrap(),
            "the gRPC health service says NOT_SERVING"
        );
        let mut unimplemented = http::HeaderMap::new();
        unimplemented.insert("grpc-status", HeaderValue::from_static("12"));
        assert!(grpc_verdict(200, &unimplemented, &empty, Bytes::new())
            .unwrap()
            .starts_with("grpc-status 12 (UNIMPLEMENTED)"));
        assert!(grpc_verdict(503, &empty, &empty, Bytes::new()).is_some());
    }

    #[test]
    fn running_out_of_file_descriptors_is_runwardens_failure_not_the_apps() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_local(&emfile));
        let failure = Failure::connect(emfile);
        assert!(failure.local && failure.message.starts_with("runwarden could not send"));
        let refused = Failure::connect(std::io::ErrorKind::ConnectionRefused.into());
        assert!(!refused.local);
        assert_eq!(refused.message, "connection refused");
    }

    #[test]
    fn checks_go_to_the_prefix_plus_the_health_path() {
        let settings = HealthSettings::default();
        let probe =
            HttpProbe::new("http://127.0.0.1:8000/v1/", &settings, AppProtocol::Http1).unwrap();
        assert_eq!(probe.url(), "http://127.0.0.1:8000/v1/health");
        let grpc = HealthSettings {
            check_protocol: CheckProtocol::Grpc,
            ..HealthSettings::default()
        };
        let probe = HttpProbe::new("http://127.0.0.1:8000", &grpc, AppProtocol::Http1).unwrap();
        assert_eq!(
            probe.url(),
            "http://127.0.0.1:8000/grpc.health.v1.Health/Check"
        );
    }
}
