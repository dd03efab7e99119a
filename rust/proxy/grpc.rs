//! gRPC's statuses as the response rules see them (R1, R4).
//!
//! A gRPC answer is HTTP 200 whatever happened; what happened is `grpc-status`, in the
//! trailers (or in the head of a trailers-only answer). runwarden judges it as the HTTP
//! status gRPC's own HTTP mapping (grpc-gateway's) gives it: `UNAVAILABLE` is gRPC's 503
//! and replaces the runner (R1); `INTERNAL`, `UNKNOWN` and `DEADLINE_EXCEEDED` are its 500
//! and 504 and ask for one extra check (R4); every other status replaces nothing.

use http::HeaderMap;

/// `application/grpc`, `application/grpc+proto`, …
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The `grpc-status` in `headers`, if there is one and it is a number.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The HTTP status a gRPC status is judged as (R1, R4), if it is one the rules read.
pub fn judged_as(code: u32) -> Option<u16> {
    match code {
        14 => Some(503),     // UNAVAILABLE
        2 | 13 => Some(500), // UNKNOWN, INTERNAL
        4 => Some(504),      // DEADLINE_EXCEEDED
        _ => None,
    }
}

pub fn code_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "unknown code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r1_r4_unavailable_is_a_503_and_internal_a_500() {
        assert_eq!(judged_as(14), Some(503));
        assert_eq!(judged_as(13), Some(500));
        assert_eq!(judged_as(2), Some(500));
        assert_eq!(judged_as(4), Some(504));
        for code in [0, 1, 3, 5, 8, 12, 16] {
            assert_eq!(judged_as(code), None, "{}", code_name(code));
        }
    }
}
