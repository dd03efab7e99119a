//! What hyper's parser does not tell, read off every request head as its bytes pass (S3, S5).
//!
//! hyper answers a request line with a version other than HTTP/1.x with 400, where RFC
//! 9110 15.6.6 and nginx say 505; and it accepts a head with both `Content-Length` and
//! `Transfer-Encoding` (it frames by the coding and closes afterwards), which the front door
//! refuses as nginx does, since two framings in one head are how requests are smuggled.
//! Neither is visible once hyper has parsed the head, so the bytes are looked at on their
//! way in. The sniffer follows an HTTP/1 connection's whole stream as hyper frames it: a
//! head (line by line, jumping from one line feed to the next), then its body (skipped by
//! its `Content-Length`, or chunk by chunk), then the next head; so a head pipelined behind
//! another, or arriving while another is at the app, is seen as one on an idle connection
//! is. Heads are numbered as hyper will hand them on, and the refusals layer asks by number.
//! A request line whose version is not HTTP/1 has its version rewritten to HTTP/1.1 in
//! place (same length), so hyper parses it and the refusals layer answers 505. No byte is
//! copied or held.
//!
//! Where hyper will not go on either (a framing it or the refusals layer refuses, which
//! ends the connection) or the stream stops being HTTP/1 (an upgrade), the sniffer stops;
//! it starts again at the next head of an idle connection.

/// What a head showed.
pub const BAD_VERSION: u8 = 1;
pub const CONTENT_LENGTH: u8 = 2;
pub const TRANSFER_ENCODING: u8 = 4;

/// The longest header name looked for ("transfer-encoding").
const NAME: usize = 17;
/// The longest `Content-Length` or `Transfer-Encoding` value followed; a longer one stops
/// the sniffer (hyper refuses most such heads anyway).
const VALUE: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    ContentLength,
    TransferEncoding,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum State {
    /// Not following the stream.
    #[default]
    Off,
    /// In the request line (or the empty lines hyper skips before one).
    RequestLine,
    /// In a header line's name: its first bytes so far (`len` of them).
    Name { len: usize },
    /// In the value of a header whose value decides the framing.
    Value(Field),
    /// In the rest of a line.
    Rest,
    /// In a body of known length: `left` bytes to go.
    Length { left: u64 },
    /// In a chunk's size line.
    ChunkSize { size: u64, digits: bool },
    /// In the rest of a chunk's size line (extensions), up to its line feed.
    ChunkExtension { size: u64 },
    /// In a chunk's data.
    ChunkData { left: u64 },
    /// After a chunk's data: its CRLF (`cr`: the CR is in).
    ChunkEnd { cr: bool },
    /// In the trailer section (`blank`: the current line is empty so far).
    Trailer { blank: bool },
}

/// What one head said of its framing, gathered as its lines pass.
#[derive(Debug, Default)]
struct Framing {
    found: u8,
    length: Option<u64>,
    /// A `Content-Length` that is not one number (or disagrees with another).
    length_bad: bool,
    codings: u8,
    chunked: bool,
    upgrade: bool,
}

#[derive(Debug, Default)]
pub struct Sniffer {
    state: State,
    /// A head has begun (its first byte is in) and not ended.
    begun: bool,
    /// The request line's last 8 bytes (its version), when it spans reads.
    tail: [u8; 8],
    tail_len: usize,
    name: [u8; NAME],
    value: [u8; VALUE],
    value_len: usize,
    framing: Framing,
    /// Heads ended so far on this connection.
    heads: u64,
    /// The first head that showed something, and what: (number, found).
    flagged: Option<(u64, u8)>,
}

impl Sniffer {
    /// Follow the stream from here, where a head begins; `heads`: the requests hyper has
    /// already handed on.
    pub fn start(&mut self, heads: u64) {
        self.state = State::RequestLine;
        self.begun = false;
        self.tail_len = 0;
        self.framing = Framing::default();
        self.heads = heads;
    }

    pub fn active(&self) -> bool {
        self.state != State::Off
    }

    /// A head has begun and not ended: its bytes wait for hyper (or for more of them).
    pub fn in_head(&self) -> bool {
        self.begun
    }

    /// The first head that showed something, once: (its number, what it showed).
    pub fn take_flagged(&mut self) -> Option<(u64, u8)> {
        self.flagged.take()
    }

    /// Scan `bytes`; rewrite a non-HTTP/1 version on a request line seen whole in them.
    pub fn scan(&mut self, bytes: &mut [u8]) {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Off => return,
                State::RequestLine => {
                    if !self.begun {
                        // httparse skips empty lines before a request line.
                        match bytes[at..].iter().position(|b| !matches!(b, b'\r' | b'\n')) {
                            Some(offset) => at += offset,
                            None => return,
                        }
                        self.begun = true;
                    }
                    match memchr::memchr(b'\n', &bytes[at..]) {
                        Some(offset) => {
                            let end = at + offset;
                            self.request_line(bytes, at, end);
                            self.state = State::Name { len: 0 };
                            at = end + 1;
                        }
                        None => {
                            self.keep_tail(&bytes[at..]);
                            return;
                        }
                    }
                }
                State::Name { len } => {
                    let byte = bytes[at];
                    at += 1;
                    match byte {
                        b'\r' if len == 0 => {}
                        b'\n' if len == 0 => self.head_ended(),
                        b'\n' => self.state = State::Name { len: 0 },
                        b':' => self.named(len),
                        _ if len < NAME => {
                            self.name[len] = byte.to_ascii_lowercase();
                            self.state = State::Name { len: len + 1 };
                        }
                        _ => self.state = State::Rest,
                    }
                }
                State::Value(field) => {
                    let rest = &bytes[at..];
                    let (line, ended) = match memchr::memchr(b'\n', rest) {
                        Some(offset) => (&rest[..offset], true),
                        None => (rest, false),
                    };
                    let room = VALUE - self.value_len.min(VALUE);
                    let take = line.len().min(room);
                    self.value[self.value_len..self.value_len + take]
                        .copy_from_slice(&line[..take]);
                    // One past the room marks a value too long to follow.
                    self.value_len = (self.value_len + line.len()).min(VALUE + 1);
                    at += line.len();
                    if ended {
                        at += 1;
                        self.valued(field);
                        self.state = State::Name { len: 0 };
                    }
                }
                State::Rest => match memchr::memchr(b'\n', &bytes[at..]) {
                    Some(offset) => {
                        at += offset + 1;
                        self.state = State::Name { len: 0 };
                    }
                    None => return,
                },
                State::Length { left } => match past(bytes.len(), at, left) {
                    Ok(end) => {
                        at = end;
                        self.body_ended();
                    }
                    Err(left) => {
                        self.state = State::Length { left };
                        return;
                    }
                },
                State::ChunkSize { size, digits } => {
                    let byte = bytes[at];
                    at += 1;
                    self.state = match (byte as char).to_digit(16) {
                        Some(digit) => match size.checked_mul(16) {
                            Some(size) => State::ChunkSize {
                                size: size + u64::from(digit),
                                digits: true,
                            },
                            None => State::Off,
                        },
                        None if !digits => State::Off,
                        None => match byte {
                            b';' | b' ' | b'\t' | b'\r' => State::ChunkExtension { size },
                            b'\n' => self.chunk_sized(size),
                            _ => State::Off,
                        },
                    };
                }
                State::ChunkExtension { size } => match memchr::memchr(b'\n', &bytes[at..]) {
                    Some(offset) => {
                        at += offset + 1;
                        self.state = self.chunk_sized(size);
                    }
                    None => return,
                },
                State::ChunkData { left } => match past(bytes.len(), at, left) {
                    Ok(end) => {
                        at = end;
                        self.state = State::ChunkEnd { cr: false };
                    }
                    Err(left) => {
                        self.state = State::ChunkData { left };
                        return;
                    }
                },
                State::ChunkEnd { cr } => {
                    let byte = bytes[at];
                    at += 1;
                    self.state = match byte {
                        b'\r' if !cr => State::ChunkEnd { cr: true },
                        b'\n' => State::ChunkSize {
                            size: 0,
                            digits: false,
                        },
                        _ => State::Off,
                    };
                }
                State::Trailer { blank } => {
                    let byte = bytes[at];
                    at += 1;
                    match byte {
                        b'\r' if blank => {}
                        b'\n' if blank => self.body_ended(),
                        b'\n' => self.state = State::Trailer { blank: true },
                        _ => match memchr::memchr(b'\n', &bytes[at..]) {
                            Some(offset) => {
                                at += offset + 1;
                                self.state = State::Trailer { blank: true };
                            }
                            None => {
                                self.state = State::Trailer { blank: false };
                                return;
                            }
                        },
                    }
                }
            }
        }
    }

    /// A header's name ended (`len` bytes of it kept).
    fn named(&mut self, len: usize) {
        self.state = match &self.name[..len] {
            b"content-length" => {
                self.framing.found |= CONTENT_LENGTH;
                self.value_len = 0;
                State::Value(Field::ContentLength)
            }
            b"transfer-encoding" => {
                self.framing.found |= TRANSFER_ENCODING;
                self.value_len = 0;
                State::Value(Field::TransferEncoding)
            }
            b"upgrade" => {
                self.framing.upgrade = true;
                State::Rest
            }
            _ => State::Rest,
        };
    }

    /// A framing header's value ended.
    fn valued(&mut self, field: Field) {
        let value = (self.value_len <= VALUE).then(|| {
            let value = &self.value[..self.value_len];
            value.strip_suffix(b"\r").unwrap_or(value).trim_ascii()
        });
        let framing = &mut self.framing;
        match field {
            Field::TransferEncoding => {
                framing.codings = framing.codings.saturating_add(1);
                framing.chunked = value.is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"));
            }
            Field::ContentLength => {
                // hyper takes a list of equal lengths ("5, 5") as one.
                let mut lengths =
                    value
                        .into_iter()
                        .flat_map(|v| v.split(|b| *b == b','))
                        .map(|n| {
                            let n = n.trim_ascii();
                            (!n.is_empty() && n.iter().all(u8::is_ascii_digit))
                                .then(|| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
                                .flatten()
                        });
                let first = lengths.next().flatten();
                let one = first.is_some() && lengths.all(|n| n == first);
                match (one, framing.length) {
                    (true, None) => framing.length = first,
                    (true, Some(before)) if Some(before) == first => {}
                    _ => framing.length_bad = true,
                }
            }
        }
    }

    /// The empty line: the head ends, and its body (if any) follows.
    fn head_ended(&mut self) {
        self.heads += 1;
        self.begun = false;
        let framing = std::mem::take(&mut self.framing);
        let both = CONTENT_LENGTH | TRANSFER_ENCODING;
        let shows = framing.found & BAD_VERSION != 0 || framing.found & both == both;
        if shows && self.flagged.is_none() {
            self.flagged = Some((self.heads, framing.found));
        }
        self.state = if framing.found & BAD_VERSION != 0
            || framing.found & both == both
            || framing.upgrade
        {
            State::Off // refused, and the connection closed; or no longer HTTP/1
        } else if framing.codings > 0 {
            if framing.codings == 1 && framing.chunked {
                State::ChunkSize {
                    size: 0,
                    digits: false,
                }
            } else {
                State::Off // refused (501)
            }
        } else if framing.length_bad {
            State::Off // refused by hyper (400)
        } else {
            match framing.length {
                Some(left) if left > 0 => State::Length { left },
                _ => State::RequestLine,
            }
        };
    }

    /// A chunk's size line ended.
    fn chunk_sized(&self, size: u64) -> State {
        if size == 0 {
            State::Trailer { blank: true }
        } else {
            State::ChunkData { left: size }
        }
    }

    /// The body (if any) ended: the next head may begin.
    fn body_ended(&mut self) {
        self.state = State::RequestLine;
        self.tail_len = 0;
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
        self.tail_len = 0;
        if !version.starts_with(b"HTTP/") || version[6] != b'.' {
            return; // not a version hyper would take as one: its own 400 stands
        }
        let (major, minor) = (version[5], version[7]);
        if !major.is_ascii_digit() || !minor.is_ascii_digit() || major == b'1' {
            return;
        }
        self.framing.found |= BAD_VERSION;
        if here >= 8 {
            // The version is in these bytes: let hyper read the line as HTTP/1.1.
            bytes[line_end - 8..line_end].copy_from_slice(b"HTTP/1.1");
        }
    }
}

/// Where `left` more bytes of a body, from `at` in a read of `len` bytes, end in it; or how
/// many are still to come after it.
fn past(len: usize, at: usize, left: u64) -> Result<usize, u64> {
    let here = (len - at) as u64;
    if here < left {
        Err(left - here)
    } else {
        Ok(at + left as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scan `chunks` as reads of one connection: the first flagged head, the bytes as hyper
    /// would read them, and whether a head was left begun.
    fn sniff(chunks: &[&[u8]]) -> (Option<(u64, u8)>, Vec<u8>, bool) {
        let mut sniffer = Sniffer::default();
        sniffer.start(0);
        let mut seen = Vec::new();
        for chunk in chunks {
            let mut bytes = chunk.to_vec();
            sniffer.scan(&mut bytes);
            seen.extend(bytes);
        }
        (sniffer.take_flagged(), seen, sniffer.in_head())
    }

    /// The same stream cut at every byte gives the same answer as in one read.
    fn sniff_split(stream: &[u8]) -> Option<(u64, u8)> {
        let (whole, _, _) = sniff(&[stream]);
        for cut in 1..stream.len() {
            let (split, _, _) = sniff(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(split, whole, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn s3_a_request_line_of_another_version_is_marked_and_read_as_http_1_1() {
        let (found, seen, _) = sniff(&[b"GET /x HTTP/2.0\r\nHost: x\r\n\r\n"]);
        assert_eq!(found, Some((1, BAD_VERSION)));
        assert!(seen.starts_with(b"GET /x HTTP/1.1\r\n"));
        let (found, seen, _) = sniff(&[b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert_eq!(found, None);
        assert!(seen.starts_with(b"GET /x HTTP/1.1\r\n"));
        let (found, _, _) = sniff(&[b"GET /x HT", b"TP/3.0\r\nHost: x\r\n\r\n"]);
        assert_eq!(
            found,
            Some((1, BAD_VERSION)),
            "a version split across reads is seen"
        );
    }

    #[test]
    fn s5_both_framings_are_seen_across_reads() {
        let (found, _, _) = sniff(&[
            b"POST / HTTP/1.1\r\nHost: x\r\nConte",
            b"nt-Length: 5\r\nTransfer-",
            b"Encoding: chunked\r\n\r\n5\r\nhello",
        ]);
        assert_eq!(found, Some((1, CONTENT_LENGTH | TRANSFER_ENCODING)));
        let (found, _, _) = sniff(&[b"POST / HTTP/1.1\nHost: x\ncontent-length: 5\n\nhello"]);
        assert_eq!(found, None);
    }

    #[test]
    fn a_header_value_never_reads_as_a_name() {
        let (found, _, _) = sniff(&[b"GET / HTTP/1.1\r\nX-A: transfer-encoding: x\r\n\r\n"]);
        assert_eq!(found, None);
    }

    #[test]
    fn s5_a_pipelined_head_is_followed_past_the_bodies_before_it() {
        let smuggle = b"POST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
            Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        // Behind a bodiless GET, a body of known length, and a chunked body with an
        // extension and trailers (whose lines look like heads, and are not).
        let mut stream = b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        stream.extend_from_slice(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 31\r\n\r\n");
        stream.extend_from_slice(b"GET /fake HTTP/2.0\r\nHost: x\r\n\r\n"[..31].as_ref());
        stream.extend_from_slice(
            b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        stream.extend_from_slice(
            b"20;ext=\"x\"\r\nContent-Length: 5\r\nX: HTTP/2.0\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n",
        );
        stream.extend_from_slice(b"\r\n"); // an empty line between requests, skipped
        stream.extend_from_slice(smuggle);
        assert_eq!(
            sniff_split(&stream),
            Some((4, CONTENT_LENGTH | TRANSFER_ENCODING))
        );
        let (_, seen, _) = sniff(&[&stream]);
        assert_eq!(seen, stream, "no byte of a body is rewritten");
    }

    #[test]
    fn s3_a_pipelined_request_line_of_another_version_is_rewritten_too() {
        let mut stream = b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        stream.extend_from_slice(b"GET /p2 HTTP/2.0\r\nHost: x\r\n\r\n");
        let (found, seen, _) = sniff(&[&stream]);
        assert_eq!(found, Some((2, BAD_VERSION)));
        assert!(seen.ends_with(b"GET /p2 HTTP/1.1\r\nHost: x\r\n\r\n"));
    }

    #[test]
    fn s6_a_partial_head_behind_a_whole_one_is_seen_begun() {
        let (_, _, begun) = sniff(&[b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTT"]);
        assert!(begun);
        let (_, _, begun) = sniff(&[b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert!(!begun);
        let (_, _, begun) = sniff(&[b"POST /p1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nab"]);
        assert!(!begun, "a body is not a head");
    }

    #[test]
    fn the_sniffer_stops_where_hyper_does_not_go_on_as_http_1() {
        for stream in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET /x HTTP/2.0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nGET /x HTTP/2.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nGET /x HTTP/2.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /x HTTP/2.0\r\n\r\n",
        ] {
            let (found, seen, _) = sniff(&[stream]);
            assert_eq!(found, None, "{}", String::from_utf8_lossy(stream));
            assert_eq!(seen, stream);
        }
        let (found, _, _) =
            sniff(&[b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nxGET /x HTTP/2.0\r\n\r\n"]);
        assert_eq!(
            found,
            Some((2, BAD_VERSION)),
            "a list of equal lengths is one length"
        );
    }
}
