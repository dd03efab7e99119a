//! The layer that sets the headers each way (S2, S4): what reaches the app is what the
//! client sent, less hop-by-hop headers (and those `Connection` names), less what runwarden
//! owns (`X-Forwarded-*`, `X-Real-IP`, `Forwarded`: the client's are replaced, never
//! trusted) and less names with `_` (which an app may read as their `-` twin, as nginx's
//! `underscores_in_headers off` drops them). The framing is hyper's to set from the body
//! (S5), never the client's copied. Answers carry exactly one `Server` and one `Date`.

use std::net::IpAddr;

use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, COOKIE, DATE, HOST, SERVER, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, StatusCode, Version};

use std::sync::Arc;

use super::answer::SERVER_NAME;
use super::conn::ConnState;
use super::layer::{layer, Post, Req, Resp, Then};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// RFC 9110 7.6.1: headers about one connection, never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
/// What runwarden sets towards the app; a client's copies are dropped.
const OWNED: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
];
/// Headers runwarden frames or sets itself besides: a check header named like one would
/// corrupt every request or response.
const FRAMED: [&str; 5] = ["content-length", "expect", "host", "server", "date"];

/// A name `--check-header` may not take.
pub fn is_reserved(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    HOP_BY_HOP
        .iter()
        .chain(&OWNED)
        .chain(&FRAMED)
        .any(|reserved| *reserved == name)
}

layer! {
    /// S2, S4.
    Headers => HeadersService { conn: Arc<ConnState> }
    future Then<S::Answer, Answered>
}

impl<S: super::layer::Inner> HeadersService<S> {
    fn handle(&mut self, mut request: Req) -> Then<S::Answer, Answered> {
        let websocket = super::extended_connect::is_websocket(&request);
        if websocket {
            super::extended_connect::to_upgrade(&mut request);
        }
        let tunnel = websocket || is_tunnel(&request);
        let answered = Answered {
            version: request.version(),
            asked_upgrade: !tunnel && request.headers().contains_key(UPGRADE),
        };
        rewrite_request(&mut request, &self.conn.forwarded_for, tunnel);
        Then::later(self.inner.call(request), answered)
    }
}

/// What the answer's headers need of its request.
pub struct Answered {
    version: Version,
    /// The client asked to switch protocols, with a body: no tunnel.
    asked_upgrade: bool,
}

impl Post for Answered {
    fn post(self, mut response: Resp) -> Resp {
        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        rewrite_response(response.headers_mut(), switched);
        if self.asked_upgrade {
            // The body stayed a body, and what follows on the connection was meant for
            // another protocol (S5).
            super::answer::close(&mut response, self.version);
        }
        response
    }
}

/// The `X-Forwarded-For` a peer's requests carry: its address (an IPv4-mapped IPv6
/// address as IPv4).
pub fn forwarded_for(peer: IpAddr) -> HeaderValue {
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        v4 => v4,
    };
    HeaderValue::from_str(&peer.to_string()).expect("an address is a header value")
}

/// An `Upgrade` runwarden tunnels: on HTTP/1.1, without a body, to anything but h2c (HTTP/2
/// is spoken to runwarden with prior knowledge; RFC 9113 retired the h2c upgrade).
fn is_tunnel<B>(request: &http::Request<B>) -> bool {
    let Some(upgrade) = request.headers().get(UPGRADE) else {
        return false;
    };
    let bodiless = request
        .headers()
        .get(CONTENT_LENGTH)
        .is_none_or(|v| v == "0")
        && !request.headers().contains_key(TRANSFER_ENCODING);
    request.version() == Version::HTTP_11
        && bodiless
        && !upgrade.as_bytes().eq_ignore_ascii_case(b"h2c")
}

/// S2/S4 on the way to the app.
pub fn rewrite_request<B>(
    request: &mut http::Request<B>,
    forwarded_for: &HeaderValue,
    tunnel: bool,
) {
    // RFC 9112 3.2.2: an absolute-form target's authority is the Host; on HTTP/2 it is
    // `:authority`.
    let host = request
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| request.headers().get(HOST).cloned());
    // `TE: trailers` is the one hop-by-hop header HTTP/2 keeps: gRPC needs it, as a server
    // answers with trailers only to a client that said so.
    let h2 = request.version() == Version::HTTP_2;
    let headers = request.headers_mut();
    let trailers_ok = h2
        && headers.get_all(TE).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        });
    let named = named_by_connection(headers);
    let mut dropped: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let text = name.as_str();
        if tunnel && name == UPGRADE {
            continue;
        }
        if HOP_BY_HOP.contains(&text)
            || OWNED.contains(&text)
            || name == CONTENT_LENGTH
            || (name == HOST && host.is_none())
            || text.contains('_')
            || named.contains(name)
        {
            dropped.push(name.clone());
        }
    }
    for name in &dropped {
        headers.remove(name);
    }
    if h2 {
        join_cookies(headers);
    }
    if trailers_ok {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if tunnel {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if let Some(host) = &host {
        headers.insert(HOST, host.clone());
    }
    headers.insert(X_FORWARDED_FOR, forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// RFC 9113 8.2.3: an HTTP/2 client may split its `cookie` into one field per cookie; they
/// are one `Cookie` again before they reach the app, joined by "; " (an HTTP/1.1 server
/// reads only one, and a list joined by "," reads as a single cookie).
fn join_cookies(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for crumb in headers.get_all(COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Each crumb was a valid value, and "; " is too.
    let joined = HeaderValue::from_bytes(&joined).expect("crumbs joined are a header value");
    headers.insert(COOKIE, joined);
}

/// S2/S4 on the way back: hop-by-hop headers out, one `Server` and one `Date`.
pub fn rewrite_response(headers: &mut HeaderMap, switched: bool) {
    let named = named_by_connection(headers);
    let mut dropped: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if switched && name == UPGRADE {
            continue;
        }
        if HOP_BY_HOP.contains(&name.as_str()) || named.contains(name) {
            dropped.push(name.clone());
        }
    }
    for name in &dropped {
        headers.remove(name);
    }
    if switched {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    keep_first(headers, SERVER, Some(SERVER_NAME));
    keep_first(headers, DATE, None); // hyper dates an answer that has none
    debug_assert!(!headers.contains_key(TRAILER));
}

fn keep_first(headers: &mut HeaderMap, name: HeaderName, default: Option<HeaderValue>) {
    let first = headers.get(&name).cloned().or(default);
    if let Some(first) = first {
        if headers.get_all(&name).iter().nth(1).is_some() || !headers.contains_key(&name) {
            headers.insert(name, first);
        }
    }
}

/// The header names a `Connection` header lists (they are hop-by-hop too).
fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[(&str, &str)]) -> http::Request<()> {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        for (name, value) in lines {
            parts.headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        parts.uri = "/echo".parse().unwrap();
        http::Request::from_parts(parts, ())
    }

    #[test]
    fn s4_what_runwarden_owns_is_replaced_and_hop_by_hop_headers_dropped() {
        let mut r = request(&[
            ("host", "app.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x_forwarded_for", "6.6.6.6"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("content-length", "5"),
            ("x-user", "kept"),
        ]);
        rewrite_request(&mut r, &forwarded_for("127.0.0.1".parse().unwrap()), false);
        let h = r.headers();
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h["host"], "app.example");
        assert_eq!(h["x-user"], "kept");
        for gone in [
            "x-real-ip",
            "forwarded",
            "x_forwarded_for",
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "content-length",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn s4_te_trailers_passes_on_http2_for_grpc_and_an_absolute_target_names_the_host() {
        let mut r = request(&[("host", "other.example"), ("te", "trailers")]);
        *r.uri_mut() = "http://public.example/echo?q=1".parse().unwrap();
        rewrite_request(
            &mut r,
            &forwarded_for("::ffff:10.0.0.1".parse().unwrap()),
            false,
        );
        assert_eq!(r.headers()["x-forwarded-for"], "10.0.0.1");
        assert!(!r.headers().contains_key("te"), "hop-by-hop on HTTP/1.1");
        assert_eq!(r.headers()["host"], "public.example");
        let mut h2 = request(&[("te", "trailers")]);
        *h2.version_mut() = Version::HTTP_2;
        rewrite_request(&mut h2, &forwarded_for("::1".parse().unwrap()), false);
        assert_eq!(h2.headers()["te"], "trailers");
    }

    #[test]
    fn s2_http2_cookie_crumbs_reach_the_app_as_one_cookie() {
        let mut h2 = request(&[
            ("cookie", "session=abc123"),
            ("cookie", "csrf=tok"),
            ("cookie", "lang=en"),
        ]);
        *h2.version_mut() = Version::HTTP_2;
        rewrite_request(&mut h2, &forwarded_for("::1".parse().unwrap()), false);
        let cookies: Vec<_> = h2.headers().get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["session=abc123; csrf=tok; lang=en"]);
        let mut one = request(&[("cookie", "a=1")]);
        *one.version_mut() = Version::HTTP_2;
        rewrite_request(&mut one, &forwarded_for("::1".parse().unwrap()), false);
        assert_eq!(one.headers()[COOKIE], "a=1");
    }

    #[test]
    fn s4_one_server_and_one_date() {
        let mut h = HeaderMap::new();
        h.append(SERVER, HeaderValue::from_static("app"));
        h.append(SERVER, HeaderValue::from_static("other"));
        h.append("transfer-encoding", HeaderValue::from_static("chunked"));
        rewrite_response(&mut h, false);
        assert_eq!(h.get_all(SERVER).iter().collect::<Vec<_>>(), ["app"]);
        assert!(!h.contains_key("transfer-encoding"));
        let mut none = HeaderMap::new();
        rewrite_response(&mut none, false);
        assert_eq!(none[SERVER], "runwarden");
    }

    #[test]
    fn a_check_header_may_not_be_one_the_proxy_frames_or_sets() {
        assert!(is_reserved("Content-Length") && is_reserved("x-forwarded-for"));
        assert!(!is_reserved("x-fal-runner-health-check"));
    }
}
