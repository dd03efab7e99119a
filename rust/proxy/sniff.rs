//! What hyper's parser does not tell, read off a request head as its bytes pass (S3, S5).
//!
//! hyper answers a request line with a version other than HTTP/1.x with 400, where RFC
//! 9110 15.6.6 and nginx say 505; and it accepts a head with both `Content-Length` and
//! `Transfer-Encoding` (it frames by the coding and closes afterwards), which the front door
//! refuses as nginx does, since two framings in one head are how requests are smuggled.
//! Neither is visible once hyper has parsed the head, so the head's bytes are looked at on
//! their way in: a head that starts while its connection is idle is scanned line by line
//! (jumping from one line feed to the next) until its end. A request line whose version is
//! not HTTP/1 has its version rewritten to HTTP/1.1 in place (same length), so hyper parses
//! it and the refusals layer answers 505. No byte is copied or held.

/// What a head showed.
pub const BAD_VERSION: u8 = 1;
pub const CONTENT_LENGTH: u8 = 2;
pub const TRANSFER_ENCODING: u8 = 4;

/// The longest header name looked for ("transfer-encoding").
const NAME: usize = 17;

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum State {
    /// Not in a head.
    #[default]
    Off,
    /// In the request line.
    RequestLine,
    /// In a header line's name: its first bytes so far (`len` of them).
    Name { len: usize },
    /// In the rest of a line.
    Rest,
}

#[derive(Debug, Default)]
pub struct Sniffer {
    state: State,
    /// The request line's last 8 bytes (its version), when it spans reads.
    tail: [u8; 8],
    tail_len: usize,
    name: [u8; NAME],
    found: u8,
}

impl Sniffer {
    /// A new head begins with the next byte.
    pub fn start(&mut self) {
        self.state = State::RequestLine;
        self.tail_len = 0;
        self.found = 0;
    }

    pub fn active(&self) -> bool {
        self.state != State::Off
    }

    /// Scan `bytes`; rewrite a non-HTTP/1 version on a request line seen whole in them.
    /// Returns what the head showed once it has ended.
    pub fn scan(&mut self, bytes: &mut [u8]) -> Option<u8> {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Off => return None,
                State::RequestLine => match memchr::memchr(b'\n', &bytes[at..]) {
                    Some(offset) => {
                        let end = at + offset;
                        self.request_line(bytes, at, end);
                        self.state = State::Name { len: 0 };
                        at = end + 1;
                    }
                    None => {
                        self.keep_tail(&bytes[at..]);
                        return None;
                    }
                },
                State::Name { len } => {
                    let byte = bytes[at];
                    at += 1;
                    match byte {
                        b'\r' if len == 0 => {}
                        b'\n' if len == 0 => {
                            self.state = State::Off; // the empty line: the head ends
                            return Some(self.found);
                        }
                        b'\n' => self.state = State::Name { len: 0 },
                        b':' => {
                            match &self.name[..len] {
                                b"content-length" => self.found |= CONTENT_LENGTH,
                                b"transfer-encoding" => self.found |= TRANSFER_ENCODING,
                                _ => {}
                            }
                            self.state = State::Rest;
                        }
                        _ if len < NAME => {
                            self.name[len] = byte.to_ascii_lowercase();
                            self.state = State::Name { len: len + 1 };
                        }
                        _ => self.state = State::Rest,
                    }
                }
                State::Rest => match memchr::memchr(b'\n', &bytes[at..]) {
                    Some(offset) => {
                        at += offset + 1;
                        self.state = State::Name { len: 0 };
                    }
                    None => return None,
                },
            }
        }
        None
    }

    /// The request line's last bytes, for a line that continues in the next read.
    fn keep_tail(&mut self, bytes: &[u8]) {
        for &byte in bytes.iter().filter(|b| **b != b'\r') {
            if self.tail_len == self.tail.len() {
                self.tail.copy_within(1.., 0);
                self.tail_len -= 1;
            }
            self.tail[self.tail_len] = byte;
            self.tail_len += 1;
        }
    }

    /// The request line ends at the line feed at `end` (it began before `start` if it
    /// spanned reads): its last token is the version.
    fn request_line(&mut self, bytes: &mut [u8], start: usize, end: usize) {
        let line_end = if end > start && bytes[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        let here = line_end - start;
        let version: [u8; 8] = if here >= 8 {
            bytes[line_end - 8..line_end].try_into().expect("8 bytes")
        } else {
            self.keep_tail(&bytes[start..line_end]);
            if self.tail_len < 8 {
                return;
            }
            self.tail
        };
        if !version.starts_with(b"HTTP/") || version[6] != b'.' {
            return; // not a version hyper would take as one: its own 400 stands
        }
        let (major, minor) = (version[5], version[7]);
        if !major.is_ascii_digit() || !minor.is_ascii_digit() || major == b'1' {
            return;
        }
        self.found |= BAD_VERSION;
        if here >= 8 {
            // The version is in these bytes: let hyper read the line as HTTP/1.1.
            bytes[line_end - 8..line_end].copy_from_slice(b"HTTP/1.1");
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
        let (found, _) = sniff(&[b"GET /x HT", b"TP/3.0\r\nHost: x\r\n\r\n"]);
        assert_eq!(
            found,
            Some(BAD_VERSION),
            "a version split across reads is seen"
        );
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
