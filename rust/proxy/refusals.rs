//! The layer that refuses what RFC 9112 refuses and hyper lets through (S3, S5): such a
//! request never reaches the app, and its connection ends after the answer, as what
//! follows on it cannot be trusted to be framed as the client meant.
//!
//! hyper refuses the rest itself: a malformed request line or header (400), a head past
//! its size limit (431), conflicting or invalid lengths and HTTP/1.0 with a transfer coding
//! (400).

use http::header::{EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Version};

use std::sync::Arc;

use super::answer::refusal;
use super::conn::ConnState;
use super::layer::{layer, Req, Then};
use super::sniff;

layer! {
    /// RFC 9112's refusals (S3).
    Refusals => RefusalsService { conn: Arc<ConnState> }
    future Then<S::Answer, ()>
}

impl<S: super::layer::Inner> RefusalsService<S> {
    fn handle(&mut self, request: Req) -> Then<S::Answer, ()> {
        // The request hyper hands on now is the connection's latest, numbered as its head.
        let sniffed = self.conn.flagged(self.conn.requests());
        match refused(&request, sniffed) {
            Some((status, why)) => Then::now(refusal(status, why, request.version())),
            None => Then::later(self.inner.call(request), ()),
        }
    }
}

/// Why RFC 9112 refuses this request, if it does; `sniffed`: what its head showed
/// (`sniff.rs`).
pub fn refused<B>(request: &http::Request<B>, sniffed: u8) -> Option<(StatusCode, &'static str)> {
    let version = request.version();
    // HTTP/2 framing is h2's to check (it refuses connection-specific headers, a transfer
    // coding among them); its Host, authority, method and target are checked here too.
    let h1 = version < Version::HTTP_2;
    if h1 && sniffed & sniff::BAD_VERSION != 0 {
        return Some((
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "runwarden speaks HTTP/1.0, HTTP/1.1 and HTTP/2 (prior knowledge)\n",
        ));
    }
    let both = sniff::CONTENT_LENGTH | sniff::TRANSFER_ENCODING;
    if h1 && sniffed & both == both {
        return Some((
            StatusCode::BAD_REQUEST,
            "Content-Length and Transfer-Encoding in one head\n",
        ));
    }
    let headers = request.headers();
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some((StatusCode::BAD_REQUEST, "more than one Host header\n"));
    }
    match host {
        None if version == Version::HTTP_11 => {
            return Some((
                StatusCode::BAD_REQUEST,
                "an HTTP/1.1 request needs a Host header\n",
            ));
        }
        Some(host) if !valid_host(host.as_bytes()) => {
            return Some((
                StatusCode::BAD_REQUEST,
                "the Host header is not a host[:port]\n",
            ));
        }
        _ => {}
    }
    // An absolute-form target's (or HTTP/2's `:authority`) becomes the app's Host: no
    // userinfo, nothing but host[:port].
    if let Some(authority) = request.uri().authority() {
        if !valid_host(authority.as_str().as_bytes()) {
            return Some((
                StatusCode::BAD_REQUEST,
                "the request's authority is not a host[:port]\n",
            ));
        }
        // RFC 9113 8.3.1: an HTTP/2 `host` naming another entity than `:authority` is
        // malformed (the app would see one, a cache or router in front the other).
        if !h1
            && host.is_some_and(|h| {
                !h.as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
            })
        {
            return Some((
                StatusCode::BAD_REQUEST,
                "the Host header differs from the request's :authority\n",
            ));
        }
    }
    if let Some(why) = transfer_coding(headers) {
        return Some(why);
    }
    if let Some(expect) = headers.get(EXPECT) {
        if !expect.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            return Some((
                StatusCode::EXPECTATION_FAILED,
                "the only Expect known is 100-continue\n",
            ));
        }
    }
    if request.method() == Method::CONNECT && !super::extended_connect::is_websocket(request) {
        return Some((
            StatusCode::BAD_REQUEST,
            "CONNECT is not proxied (but for WebSocket over HTTP/2)\n",
        ));
    }
    let uri = request.uri();
    if uri.path() == "*" || !uri.path().starts_with('/') {
        return Some((
            StatusCode::BAD_REQUEST,
            "the request target must be a path starting with '/'\n",
        ));
    }
    if let Some(scheme) = uri.scheme_str() {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Some((
                StatusCode::BAD_REQUEST,
                "an absolute-form target must be http\n",
            ));
        }
    }
    None
}

/// RFC 9112 6.1: a coding runwarden does not decode (anything but `chunked` alone) is 501,
/// as nginx answers; an empty one too (`Transfer-Encoding:` beside `chunked` is two
/// framings an intermediary may read differently).
fn transfer_coding(headers: &HeaderMap) -> Option<(StatusCode, &'static str)> {
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii);
    let first = codings.next();
    match (first, codings.next()) {
        (None, _) => None,
        (Some(coding), None) if coding.eq_ignore_ascii_case(b"chunked") => None,
        _ => Some((
            StatusCode::NOT_IMPLEMENTED,
            "runwarden decodes no transfer coding but chunked, once\n",
        )),
    }
}

/// RFC 9112 3.2: `Host = uri-host [ ":" port ]`: a host name, an IPv4 address or an IP
/// literal in brackets, and a port (1 to 5 digits, at most 65535) after one colon; or empty,
/// as a request whose target names no authority may send it. Stricter than RFC 3986's
/// reg-name, as nginx is: no sub-delimiters (`a,b` and `a;b` would read as a list or a
/// parameter to whatever parses `X-Forwarded-Host` next), no empty name before a port.
pub fn valid_host(host: &[u8]) -> bool {
    if host.is_empty() {
        return true;
    }
    let (name, port) = match host.iter().rposition(|b| *b == b':') {
        Some(colon) if !host.starts_with(b"[") || host[..colon].ends_with(b"]") => {
            (&host[..colon], Some(&host[colon + 1..]))
        }
        _ => (host, None),
    };
    if let Some(port) = port {
        let in_range = (1..=5).contains(&port.len())
            && port.iter().all(u8::is_ascii_digit)
            && port.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')) <= 65535;
        if !in_range {
            return false;
        }
    }
    if let Some(literal) = name.strip_prefix(b"[").and_then(|n| n.strip_suffix(b"]")) {
        return !literal.is_empty()
            && literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
    }
    !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, method: &str, target: &str, hosts: &[&str]) -> http::Request<()> {
        let mut builder = http::Request::builder()
            .version(version)
            .method(method)
            .uri(target);
        for host in hosts {
            builder = builder.header(HOST, *host);
        }
        builder.body(()).unwrap()
    }

    fn status(request: &http::Request<()>) -> Option<StatusCode> {
        refused(request, 0).map(|(status, _)| status)
    }

    #[test]
    fn s3_http2_requests_meet_the_same_host_method_and_authority_checks() {
        let h2 = Version::HTTP_2;
        assert_eq!(
            status(&request(h2, "GET", "http://app.example/x", &[])),
            None
        );
        assert_eq!(
            status(&request(h2, "GET", "/x", &[])),
            None,
            "no Host on HTTP/2"
        );
        let bad = StatusCode::BAD_REQUEST;
        assert_eq!(
            status(&request(h2, "CONNECT", "app.example:443", &[])),
            Some(bad)
        );
        assert_eq!(status(&request(h2, "GET", "/x", &["a", "b"])), Some(bad));
        assert_eq!(status(&request(h2, "GET", "/x", &["a b"])), Some(bad));
        let both = |host| status(&request(h2, "GET", "http://app.example/x", &[host]));
        assert_eq!(both("app.example"), None);
        assert_eq!(both("APP.example"), None);
        assert_eq!(
            both("evil.example"),
            Some(bad),
            "host differs from :authority"
        );
        assert_eq!(
            status(&request(h2, "GET", "http://user@app.example/x", &[])),
            Some(bad)
        );
    }

    #[test]
    fn s3_an_absolute_form_authority_with_userinfo_is_refused() {
        let h1 = Version::HTTP_11;
        let absolute = |target| status(&request(h1, "GET", target, &["x"]));
        assert_eq!(absolute("http://app.example:8080/x"), None);
        assert_eq!(
            absolute("http://user:pw@app.example/x"),
            Some(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn s3_host_must_be_a_host_and_maybe_a_port() {
        for good in [
            "x",
            "app.example",
            "app.example:8080",
            "10.0.0.1:80",
            "[::1]:8080",
            "[::1]",
            "",
            "x:65535",
        ] {
            assert!(valid_host(good.as_bytes()), "{good:?}");
        }
        for bad in [
            "good.example evil",
            "a@b",
            "x:port",
            "[::1",
            "a/b",
            "x:1:2",
            "a,b",
            "a;b",
            ":80",
            "x:",
            "x:65536",
            "x:000080",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn s3_only_chunked_alone_is_a_transfer_coding_runwarden_forwards() {
        let with = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(TRANSFER_ENCODING, v.parse().unwrap());
            }
            transfer_coding(&headers)
        };
        assert!(with(&[]).is_none());
        assert!(with(&["chunked"]).is_none());
        assert!(with(&["Chunked"]).is_none());
        for refused in [
            &["gzip, chunked"][..],
            &["gzip"],
            &["chunked", "chunked"],
            &["chunked, chunked"],
            &["", "chunked"],
            &["chunked", ""],
            &["chunked,"],
            &[""],
        ] {
            let status = with(refused).map(|(status, _)| status);
            assert_eq!(status, Some(StatusCode::NOT_IMPLEMENTED), "{refused:?}");
        }
    }
}
