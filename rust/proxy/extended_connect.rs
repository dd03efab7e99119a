//! WebSocket over HTTP/2 (RFC 8441): an extended `CONNECT` with `:protocol websocket`
//! reaches the app as the HTTP/1.1 upgrade it understands (RFC 6455's `GET` with `Upgrade:
//! websocket`), and the app's `101` goes back as the `200` that opens the stream as a
//! tunnel. Between the two, the tunnel is the same as an HTTP/1.1 WebSocket's
//! (`tunnel.rs`): counted in flight, held at the door, drained and cut alike.
//!
//! hyper does the framing both ways (`enable_connect_protocol`, `ext::Protocol`, its h2
//! upgrade); what is here is only the translation between the two handshakes.

use http::header::{HeaderName, HeaderValue, CONNECTION, UPGRADE};
use http::{Method, StatusCode, Version};

const SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
const SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");

/// An HTTP/2 extended `CONNECT` opening a WebSocket.
pub fn is_websocket<B>(request: &http::Request<B>) -> bool {
    request.version() == Version::HTTP_2
        && request.method() == Method::CONNECT
        && request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// The HTTP/1.1 handshake the app expects (RFC 6455 4.1): `GET`, `Upgrade: websocket`, a
/// fresh `Sec-WebSocket-Key`; the client's own `Sec-WebSocket-Version`, subprotocols and
/// extensions are kept as they are.
pub fn to_upgrade<B>(request: &mut http::Request<B>) {
    *request.method_mut() = Method::GET;
    request.extensions_mut().remove::<hyper::ext::Protocol>();
    let headers = request.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(SEC_WEBSOCKET_KEY, websocket_key());
    headers
        .entry(SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
}

/// The app's `101` as the HTTP/2 client's `200` (RFC 8441 5): no `Upgrade`, `Connection`
/// or `Sec-WebSocket-Accept` (the key was runwarden's, not the client's).
pub fn to_h2_answer(parts: &mut http::response::Parts) {
    parts.status = StatusCode::OK;
    for name in [UPGRADE, CONNECTION, SEC_WEBSOCKET_ACCEPT] {
        parts.headers.remove(name);
    }
}

/// 16 random bytes in base64 (RFC 6455 4.1). From the kernel's `getrandom(2)` through libc,
/// already a dependency, rather than a crate for 16 bytes.
fn websocket_key() -> HeaderValue {
    let mut nonce = [0u8; 16];
    // SAFETY: the buffer is 16 writable bytes; getrandom fills at most that many.
    let filled = unsafe { libc::getrandom(nonce.as_mut_ptr().cast(), nonce.len(), 0) };
    if filled != nonce.len() as isize {
        // Never seen for 16 bytes; the key proves only that the app speaks WebSocket, so a
        // clock-derived one still does that.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        nonce = now.to_le_bytes();
    }
    HeaderValue::from_str(&base64(&nonce)).expect("base64 is a header value")
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_rfc_4648s() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff; 16]), "/////////////////////w==");
    }

    #[test]
    fn p1_an_extended_connect_becomes_an_http_1_1_upgrade_and_its_101_a_200() {
        let mut request = http::Request::builder()
            .version(Version::HTTP_2)
            .method(Method::CONNECT)
            .uri("http://app.example/chat")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "chat")
            .extension(hyper::ext::Protocol::from_static("websocket"))
            .body(())
            .unwrap();
        assert!(is_websocket(&request));
        to_upgrade(&mut request);
        assert_eq!(request.method(), Method::GET);
        let h = request.headers();
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[SEC_WEBSOCKET_KEY].len(), 24);
        assert_eq!(h["sec-websocket-protocol"], "chat");
        let (mut parts, ()) = http::Response::builder()
            .status(101)
            .header(UPGRADE, "websocket")
            .header(SEC_WEBSOCKET_ACCEPT, "x")
            .header("sec-websocket-protocol", "chat")
            .body(())
            .unwrap()
            .into_parts();
        to_h2_answer(&mut parts);
        assert_eq!(parts.status, StatusCode::OK);
        assert!(!parts.headers.contains_key(UPGRADE));
        assert_eq!(parts.headers["sec-websocket-protocol"], "chat");
    }

    #[test]
    fn a_plain_connect_or_another_protocol_is_no_websocket() {
        let connect = |protocol: Option<&'static str>| {
            let mut builder = http::Request::builder()
                .version(Version::HTTP_2)
                .method(Method::CONNECT)
                .uri("app.example:443");
            if let Some(p) = protocol {
                builder = builder.extension(hyper::ext::Protocol::from_static(p));
            }
            is_websocket(&builder.body(()).unwrap())
        };
        assert!(!connect(None));
        assert!(!connect(Some("connect-udp")));
    }
}
