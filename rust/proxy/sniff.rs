//! What hyper's parser does not tell, read off a request head as its bytes pass (S3, S5).
//!
//! hyper answers a request line with a version other than HTTP/1.x with 400, where RFC
//! 9110 15.6.6 and nginx say 505; and it accepts a head with both `Content-Length` and
//! `Transfer-Encoding` (it frames by the coding and closes afterwards), which the front door
//! refuses as nginx does, since two framings in one head are how requests are smuggled.
//! Neither is visible once hyper has parsed the head, so the head's first bytes are watched
//! on their way in: a head that starts while its connection is idle is scanned, line by
//! line, until its end. A request line whose version is not HTTP/1 has its version
//! rewritten to HTTP/1.1 in place (same length), so hyper parses it and the refusals layer
//! answers 505. No byte is copied or held: the scan keeps a few bytes of state.

/// What a head showed.
pub const BAD_VERSION: u8 = 1;
pub const CONTENT_LENGTH: u8 = 2;
pub const TRANSFER_ENCODING: u8 = 4;

/// The longest header name looked for.
const NAME: usize = 17;

#[derive(Debug, Default)]
enum State {
    /// Not in a head.
    #[default]
    Off,
    /// In the request line; the last 8 bytes seen.
    RequestLine { tail: [u8; 8], seen: usize },
    /// At a line's start, or in a header name (its first bytes, lowercased).
    Name {
        name: [u8; NAME],
        len: usize,
        at_start: bool,
    },
    /// In a header's value or past the name's first bytes.
    Rest,
}

#[derive(Debug, Default)]
pub struct Sniffer {
    state: State,
    found: u8,
}

impl Sniffer {
    /// A new head begins with the next byte.
    pub fn start(&mut self) {
        self.state = State::RequestLine {
            tail: [0; 8],
            seen: 0,
        };
        self.found = 0;
    }

    pub fn active(&self) -> bool {
        !matches!(self.state, State::Off)
    }

    /// Scan `bytes`; rewrite a non-HTTP/1 version on a request line seen whole in them.
    /// Returns what the head showed once it has ended.
    pub fn scan(&mut self, bytes: &mut [u8]) -> Option<u8> {
        let mut line_start = 0;
        for i in 0..bytes.len() {
            let byte = bytes[i];
            match &mut self.state {
                State::Off => return None,
                State::RequestLine { tail, seen } => {
                    if byte == b'\n' {
                        let end = if i > 0 && bytes[i - 1] == b'\r' {
                            i - 1
                        } else {
                            i
                        };
                        self.request_line(bytes, line_start, end);
                        self.state = State::Name {
                            name: [0; NAME],
                            len: 0,
                            at_start: true,
                        };
                    } else if byte != b'\r' {
                        tail.rotate_left(1);
                        tail[7] = byte;
                        *seen += 1;
                    }
                }
                State::Name {
                    name,
                    len,
                    at_start,
                } => match byte {
                    b'\r' => {}
                    b'\n' if *at_start => {
                        self.state = State::Off; // the empty line: the head ends
                        return Some(self.found);
                    }
                    b'\n' => {
                        self.state = State::Name {
                            name: [0; NAME],
                            len: 0,
                            at_start: true,
                        }
                    }
                    b':' => {
                        let name = &name[..*len];
                        if name == b"content-length" {
                            self.found |= CONTENT_LENGTH;
                        } else if name == b"transfer-encoding" {
                            self.found |= TRANSFER_ENCODING;
                        }
                        self.state = State::Rest;
                    }
                    _ if *len < NAME => {
                        name[*len] = byte.to_ascii_lowercase();
                        *len += 1;
                        *at_start = false;
                    }
                    _ => self.state = State::Rest,
                },
                State::Rest => {
                    if byte == b'\n' {
                        self.state = State::Name {
                            name: [0; NAME],
                            len: 0,
                            at_start: true,
                        };
                    }
                }
            }
            if byte == b'\n' {
                line_start = i + 1;
            }
        }
        None
    }

    /// A request line ends at `end`: its last token is the version.
    fn request_line(&mut self, bytes: &mut [u8], start: usize, end: usize) {
        let State::RequestLine { tail, seen } = &self.state else {
            return;
        };
        let version = *tail;
        if *seen < 8 || !version.starts_with(b"HTTP/") || version[6] != b'.' {
            return; // not a version hyper would take as one: its own 400 stands
        }
        let (major, minor) = (version[5], version[7]);
        if !major.is_ascii_digit() || !minor.is_ascii_digit() || major == b'1' {
            return;
        }
        self.found |= BAD_VERSION;
        // The line is whole in these bytes: let hyper read it as HTTP/1.1.
        if end >= start + 8 && bytes[end - 8..end] == version {
            bytes[end - 8..end].copy_from_slice(b"HTTP/1.1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff(chunks: &[&[u8]]) -> (Option<u8>, Vec<u8>) {
        let mut sniffer = Sniffer::default();
        sniffer.start();
        let mut seen = Vec::new();
        let mut found = None;
        for chunk in chunks {
            let mut bytes = chunk.to_vec();
            if found.is_none() {
                found = sniffer.scan(&mut bytes);
            }
            seen.extend(bytes);
        }
        (found, seen)
    }

    #[test]
    fn s3_a_request_line_of_another_version_is_marked_and_read_as_http_1_1() {
        let (found, seen) = sniff(&[b"GET /x HTTP/2.0\r\nHost: x\r\n\r\n"]);
        assert_eq!(found, Some(BAD_VERSION));
        assert!(seen.starts_with(b"GET /x HTTP/1.1\r\n"));
        let (found, seen) = sniff(&[b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert_eq!(found, Some(0));
        assert!(seen.starts_with(b"GET /x HTTP/1.1\r\n"));
    }

    #[test]
    fn s5_both_framings_are_seen_across_reads() {
        let (found, _) = sniff(&[
            b"POST / HTTP/1.1\r\nHost: x\r\nConte",
            b"nt-Length: 5\r\nTransfer-",
            b"Encoding: chunked\r\n\r\n5\r\nhello",
        ]);
        assert_eq!(found, Some(CONTENT_LENGTH | TRANSFER_ENCODING));
        let (found, _) = sniff(&[b"POST / HTTP/1.1\nHost: x\ncontent-length: 5\n\nhello"]);
        assert_eq!(found, Some(CONTENT_LENGTH));
    }

    #[test]
    fn a_header_value_never_reads_as_a_name() {
        let (found, _) = sniff(&[b"GET / HTTP/1.1\r\nX-A: transfer-encoding: x\r\n\r\n"]);
        assert_eq!(found, Some(0));
    }
}
