//! A minimal, strict HTTP/1.1 client: a request writer, an incremental response parser
//! (`Content-Length`, `chunked`, or close-delimited bodies) with size limits, and the
//! [`Transport`] a front end provides (one byte stream per request).
//!
//! Strictness, because the response comes from an untrusted network path (the relay,
//! the host): lines end in CRLF and nothing else; no obsolete line folding; header
//! names are tokens; a response with both `Transfer-Encoding` and `Content-Length`, or
//! with two of either, is refused (request-smuggling shapes); `1xx` responses are
//! refused (we never send `Expect`); bytes after a complete message are refused.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

/// A byte-stream transport to the KBS: one connection at a time, one request per
/// connection (`Connection: close`).
pub trait Transport {
    /// Opens a new connection (closing any previous one).
    fn open(&mut self) -> Result<(), TransportError>;
    /// Writes all of `data`.
    fn write_all(&mut self, data: &[u8]) -> Result<(), TransportError>;
    /// Reads some bytes into `buf`; `Ok(0)` is the end of the stream.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError>;
    /// Closes the connection (idempotent).
    fn close(&mut self);
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn open(&mut self) -> Result<(), TransportError> {
        (**self).open()
    }
    fn write_all(&mut self, data: &[u8]) -> Result<(), TransportError> {
        (**self).write_all(data)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        (**self).read(buf)
    }
    fn close(&mut self) {
        (**self).close()
    }
}

#[cfg(feature = "std")]
impl<T: Transport + ?Sized> Transport for std::boxed::Box<T> {
    fn open(&mut self) -> Result<(), TransportError> {
        (**self).open()
    }
    fn write_all(&mut self, data: &[u8]) -> Result<(), TransportError> {
        (**self).write_all(data)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        (**self).read(buf)
    }
    fn close(&mut self) {
        (**self).close()
    }
}

/// A transport failed (connection refused or reset, device error, timeout).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("transport error: {0}")]
pub struct TransportError(pub String);

impl TransportError {
    /// An error with a static description.
    pub fn new(what: &str) -> Self {
        Self(what.into())
    }
}

/// Size limits of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Status line plus headers, including the blank line.
    pub max_head: usize,
    /// Number of header fields (and chunked trailer fields).
    pub max_headers: usize,
    /// Decoded body bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 16 << 10,
            max_headers: 64,
            max_body: 1 << 20,
        }
    }
}

/// Why an HTTP message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The connection to the verifier could not be opened (the transport's error says
    /// why: for the vsock relay, that the host relay could not reach the verifier).
    #[error("cannot connect to the verifier")]
    Connect(#[source] TransportError),
    /// The connection ended before a single byte of the response: the verifier, or the
    /// relay's connection to it, dropped it.
    #[error("the connection closed before any response arrived (the verifier, or the host relay's connection to it, dropped it)")]
    NoResponse,
    /// A request field would break the message framing.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The response is malformed.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The response exceeds a size limit.
    #[error("response too large: {0}")]
    TooLarge(&'static str),
    /// The connection ended before the response was complete.
    #[error("the response is truncated")]
    Truncated,
}

/// Request methods we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
}

/// A request to encode.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Method.
    pub method: Method,
    /// Origin-form target (`/kbs/v0/auth`).
    pub path: &'a str,
    /// `Host` header value.
    pub host: &'a str,
    /// Extra header fields (name, value).
    pub headers: &'a [(&'a str, &'a str)],
    /// Body (sent with `Content-Length`, and `Content-Type: application/json` if not
    /// empty).
    pub body: &'a [u8],
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_field_value(s: &[u8]) -> bool {
    s.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

impl Request<'_> {
    /// The request as bytes on the wire.
    pub fn encode(&self) -> Result<Vec<u8>, HttpError> {
        let path_ok = self.path.starts_with('/')
            && self.path.bytes().all(|b| b.is_ascii_graphic())
            && !self.path.is_empty();
        if !path_ok {
            return Err(HttpError::InvalidRequest(
                "the request target is not a path",
            ));
        }
        if self.host.is_empty() || !self.host.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(HttpError::InvalidRequest(
                "the host is not a valid authority",
            ));
        }
        let mut head = String::with_capacity(256);
        let m = match self.method {
            Method::Get => "GET",
            Method::Post => "POST",
        };
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "{m} {} HTTP/1.1\r\nHost: {}\r\n",
            self.path, self.host
        );
        for (name, value) in self.headers {
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(HttpError::InvalidRequest("a header name is not a token"));
            }
            if !is_field_value(value.as_bytes()) {
                return Err(HttpError::InvalidRequest(
                    "a header value has control bytes",
                ));
            }
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if !self.body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if !self.body.is_empty() || self.method == Method::Post {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        head.push_str("Accept: application/json\r\nConnection: close\r\n\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body);
        Ok(out)
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields in order (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
}

impl Response {
    /// Values of every header field called `name` (case-insensitive).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The only value of header `name`, if present exactly once.
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        let mut it = self.header_values(name);
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

/// Parses a header line into (lower-case name, trimmed value).
fn header_line(line: &[u8]) -> Result<(String, String), HttpError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::Malformed("a header line has no colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::Malformed("a header name is not a token"));
    }
    if !is_field_value(value) {
        return Err(HttpError::Malformed("a header value has control bytes"));
    }
    let value = value.trim_ascii();
    let name = core::str::from_utf8(name).map_err(|_| HttpError::Malformed("header name"))?;
    // Field values may carry obs-text; keep them only if UTF-8 (we never need others).
    let value = core::str::from_utf8(value)
        .map_err(|_| HttpError::Malformed("a header value is not UTF-8"))?;
    Ok((name.to_ascii_lowercase(), value.into()))
}

enum Framing {
    None,
    Length(usize),
    Chunked,
    Close,
}

/// Parses `buf` as a complete response. `Ok(None)`: more bytes are needed (only when
/// `eof` is false). `eof`: the peer closed the stream after `buf`.
pub fn parse_response(
    buf: &[u8],
    eof: bool,
    limits: &Limits,
) -> Result<Option<Response>, HttpError> {
    let head_end = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) if p + 4 <= limits.max_head => p,
        Some(_) => return Err(HttpError::TooLarge("the response head")),
        None if buf.len() >= limits.max_head => {
            return Err(HttpError::TooLarge("the response head"))
        }
        None if eof => return Err(HttpError::Truncated),
        None => return Ok(None),
    };
    let head = &buf[..head_end + 2];
    let mut lines = Vec::new();
    let mut pos = 0;
    while pos < head.len() {
        let end = find_crlf(head, pos).ok_or(HttpError::Malformed("line ending"))?;
        let line = &head[pos..end];
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(HttpError::Malformed("a bare CR or LF"));
        }
        lines.push(line);
        pos = end + 2;
    }
    let (status_line, header_lines) = lines
        .split_first()
        .ok_or(HttpError::Malformed("no status line"))?;
    let status = parse_status_line(status_line)?;
    if header_lines.len() > limits.max_headers {
        return Err(HttpError::TooLarge("too many header fields"));
    }
    let mut headers = Vec::with_capacity(header_lines.len());
    for line in header_lines {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(HttpError::Malformed("obsolete line folding"));
        }
        headers.push(header_line(line)?);
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let framing = framing(&response, limits)?;
    let body = &buf[head_end + 4..];
    match framing {
        Framing::None => {
            if !body.is_empty() {
                return Err(HttpError::Malformed("a body where none is allowed"));
            }
        }
        Framing::Length(n) => {
            if body.len() < n {
                return if eof {
                    Err(HttpError::Truncated)
                } else {
                    Ok(None)
                };
            }
            if body.len() > n {
                return Err(HttpError::Malformed("bytes after the message"));
            }
            response.body = body.to_vec();
        }
        Framing::Close => {
            if body.len() > limits.max_body {
                return Err(HttpError::TooLarge("the body"));
            }
            if !eof {
                return Ok(None);
            }
            response.body = body.to_vec();
        }
        Framing::Chunked => match dechunk(body, limits)? {
            Some(decoded) => response.body = decoded,
            None if eof => return Err(HttpError::Truncated),
            None => return Ok(None),
        },
    }
    Ok(Some(response))
}

fn parse_status_line(line: &[u8]) -> Result<u16, HttpError> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
        .ok_or(HttpError::Malformed("not an HTTP/1.x status line"))?;
    let code = rest
        .get(..3)
        .filter(|c| c.iter().all(u8::is_ascii_digit))
        .ok_or(HttpError::Malformed("bad status code"))?;
    match rest.get(3) {
        None | Some(b' ') => {}
        Some(_) => return Err(HttpError::Malformed("bad status code")),
    }
    if !is_field_value(rest.get(4..).unwrap_or_default()) {
        return Err(HttpError::Malformed("bad reason phrase"));
    }
    let code = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if !(200..=599).contains(&code) {
        return Err(HttpError::Malformed("unexpected status class"));
    }
    Ok(code)
}

fn framing(r: &Response, limits: &Limits) -> Result<Framing, HttpError> {
    let te: Vec<&str> = r.header_values("transfer-encoding").collect();
    let cl: Vec<&str> = r.header_values("content-length").collect();
    if r.status == 204 || r.status == 304 {
        return if te.is_empty() && cl.iter().all(|v| *v == "0") {
            Ok(Framing::None)
        } else {
            Err(HttpError::Malformed("a body on a bodiless status"))
        };
    }
    match (te.as_slice(), cl.as_slice()) {
        ([], []) => Ok(Framing::Close),
        ([t], []) if t.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
        ([_], []) => Err(HttpError::Malformed("unsupported transfer coding")),
        ([], [n]) => {
            if n.is_empty() || n.len() > 10 || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::Malformed("bad Content-Length"));
            }
            let n: usize = n
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length"))?;
            if n > limits.max_body {
                return Err(HttpError::TooLarge("the body"));
            }
            Ok(Framing::Length(n))
        }
        _ => Err(HttpError::Malformed(
            "conflicting or repeated message framing headers",
        )),
    }
}

/// Decodes a chunked body; `Ok(None)` if incomplete.
fn dechunk(buf: &[u8], limits: &Limits) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = find_crlf(buf, pos) else {
            if buf.len() - pos > 1024 {
                return Err(HttpError::Malformed("a chunk-size line is too long"));
            }
            return Ok(None);
        };
        let line = &buf[pos..eol];
        if line.len() > 1024 || line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(HttpError::Malformed("bad chunk-size line"));
        }
        let size_end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
        let digits = &line[..size_end];
        if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(HttpError::Malformed("bad chunk size"));
        }
        if !is_field_value(&line[size_end..]) {
            return Err(HttpError::Malformed("bad chunk extension"));
        }
        let size = digits.iter().fold(0usize, |acc, &d| {
            let v = (d as char).to_digit(16).unwrap_or(0) as usize;
            acc * 16 + v
        });
        pos = eol + 2;
        if size == 0 {
            // Trailer fields, then the final CRLF.
            let mut trailers = 0;
            loop {
                let Some(eol) = find_crlf(buf, pos) else {
                    return Ok(None);
                };
                if eol == pos {
                    if eol + 2 != buf.len() {
                        return Err(HttpError::Malformed("bytes after the message"));
                    }
                    return Ok(Some(out));
                }
                trailers += 1;
                if trailers > limits.max_headers {
                    return Err(HttpError::TooLarge("too many trailer fields"));
                }
                header_line(&buf[pos..eol])?;
                pos = eol + 2;
            }
        }
        if out.len() + size > limits.max_body {
            return Err(HttpError::TooLarge("the body"));
        }
        let Some(data) = buf.get(pos..pos + size) else {
            return Ok(None);
        };
        match buf.get(pos + size..pos + size + 2) {
            None if buf.len() < pos + size + 2 => return Ok(None),
            Some(b"\r\n") => {}
            _ => return Err(HttpError::Malformed("a chunk does not end in CRLF")),
        }
        out.extend_from_slice(data);
        pos += size + 2;
    }
}

/// Sends `req` on a fresh connection of `transport` and reads the response.
pub fn exchange(
    transport: &mut dyn Transport,
    req: &Request<'_>,
    limits: &Limits,
) -> Result<Response, HttpError> {
    let bytes = req.encode()?;
    transport.open().map_err(HttpError::Connect)?;
    let result = (|| {
        transport.write_all(&bytes)?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        // Raw bytes: head, body, and chunk framing (bounded by the body limit again).
        let max_raw = limits.max_head + 2 * limits.max_body + 4096;
        loop {
            let n = transport.read(&mut chunk)?;
            let eof = n == 0;
            if eof && buf.is_empty() {
                return Err(HttpError::NoResponse);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > max_raw {
                return Err(HttpError::TooLarge("the response"));
            }
            if let Some(resp) = parse_response(&buf, eof, limits)? {
                return Ok(resp);
            }
        }
    })();
    transport.close();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn parse(s: &[u8]) -> Result<Option<Response>, HttpError> {
        parse_response(s, false, &Limits::default())
    }

    #[test]
    fn writes_requests() {
        let r = Request {
            method: Method::Post,
            path: "/kbs/v0/auth",
            host: "kbs",
            headers: &[("Cookie", "kbs-session-id=abc")],
            body: b"{}",
        };
        assert_eq!(
            r.encode().unwrap(),
            b"POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\nCookie: kbs-session-id=abc\r\nContent-Type: application/json\r\nContent-Length: 2\r\nAccept: application/json\r\nConnection: close\r\n\r\n{}"
        );
        let g = Request {
            method: Method::Get,
            path: "/x",
            host: "kbs",
            headers: &[],
            body: b"",
        };
        assert!(!g
            .encode()
            .unwrap()
            .windows(14)
            .any(|w| w == b"Content-Length"));
        for (path, host, h) in [
            ("/a b", "kbs", ("A", "b")),
            ("x", "kbs", ("A", "b")),
            ("/x", "k bs", ("A", "b")),
            ("/x", "kbs", ("A:", "b")),
            ("/x", "kbs", ("A", "b\r\nEvil: 1")),
        ] {
            let r = Request {
                method: Method::Get,
                path,
                host,
                headers: &[h],
                body: b"",
            };
            assert!(matches!(r.encode(), Err(HttpError::InvalidRequest(_))));
        }
    }

    /// A scripted transport: `open` fails with `refuse`, else reads return `answer`.
    struct Refusing {
        refuse: Option<TransportError>,
        answer: Vec<u8>,
    }

    impl Transport for Refusing {
        fn open(&mut self) -> Result<(), TransportError> {
            self.refuse.clone().map_or(Ok(()), Err)
        }
        fn write_all(&mut self, _: &[u8]) -> Result<(), TransportError> {
            Ok(())
        }
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
            let n = buf.len().min(self.answer.len());
            buf[..n].copy_from_slice(&self.answer[..n]);
            self.answer.drain(..n);
            Ok(n)
        }
        fn close(&mut self) {}
    }

    #[test]
    fn an_unreachable_verifier_is_named_not_a_truncated_response() {
        let req = Request {
            method: Method::Get,
            path: "/x",
            host: "kbs",
            headers: &[],
            body: b"",
        };
        let cause =
            TransportError::new("the verifier was unreachable (the host relay could not connect)");
        let mut t = Refusing {
            refuse: Some(cause.clone()),
            answer: Vec::new(),
        };
        let e = exchange(&mut t, &req, &Limits::default()).unwrap_err();
        assert_eq!(e, HttpError::Connect(cause));
        assert_eq!(e.to_string(), "cannot connect to the verifier");
        // A stream that ends before any byte: not "truncated".
        let mut t = Refusing {
            refuse: None,
            answer: Vec::new(),
        };
        let e = exchange(&mut t, &req, &Limits::default()).unwrap_err();
        assert_eq!(e, HttpError::NoResponse);
        assert!(e.to_string().contains("before any response arrived"));
        // A stream cut inside the response is still truncated.
        let mut t = Refusing {
            refuse: None,
            answer: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe".to_vec(),
        };
        assert_eq!(
            exchange(&mut t, &req, &Limits::default()).unwrap_err(),
            HttpError::Truncated
        );
    }

    #[test]
    fn content_length_bodies() {
        let msg = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=b\r\n\r\nhello";
        for cut in 0..msg.len() {
            assert_eq!(parse(&msg[..cut]).unwrap(), None, "prefix {cut}");
            assert_eq!(
                parse_response(&msg[..cut], true, &Limits::default()),
                Err(HttpError::Truncated)
            );
        }
        let r = parse(msg).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.header("set-cookie"), Some("a=b"));
        assert_eq!(r.header("SET-COOKIE"), Some("a=b"));
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab").is_err());
    }

    #[test]
    fn chunked_bodies() {
        let msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n";
        for cut in 0..msg.len() {
            assert_eq!(parse(&msg[..cut]).unwrap(), None, "prefix {cut}");
        }
        assert_eq!(parse(msg).unwrap().unwrap().body, b"hello!");
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nextra",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n123456789\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn close_delimited_and_bodiless() {
        let msg = b"HTTP/1.0 200 OK\r\n\r\nabc";
        assert_eq!(parse(msg).unwrap(), None);
        let r = parse_response(msg, true, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(r.body, b"abc");
        assert!(parse(b"HTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap()
            .body
            .is_empty());
        assert!(parse(b"HTTP/1.1 204 No Content\r\n\r\nx").is_err());
    }

    #[test]
    fn refuses_malformed_heads() {
        for bad in [
            &b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\x01\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn enforces_limits() {
        let small = Limits {
            max_head: 64,
            max_headers: 2,
            max_body: 4,
        };
        let long_head = vec![b'a'; 100];
        assert_eq!(
            parse_response(&long_head, false, &small),
            Err(HttpError::TooLarge("the response head"))
        );
        let many = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert!(matches!(
            parse_response(many, false, &small),
            Err(HttpError::TooLarge(_))
        ));
        let body = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert!(matches!(
            parse_response(body, false, &small),
            Err(HttpError::TooLarge(_))
        ));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\n";
        assert!(matches!(
            parse_response(chunked, false, &small),
            Err(HttpError::TooLarge(_))
        ));
    }

    /// A scripted transport: yields `response` in `step`-byte reads.
    struct Scripted {
        response: Vec<u8>,
        at: usize,
        step: usize,
        written: Vec<u8>,
        opened: usize,
        closed: usize,
    }

    impl Transport for Scripted {
        fn open(&mut self) -> Result<(), TransportError> {
            self.opened += 1;
            Ok(())
        }
        fn write_all(&mut self, data: &[u8]) -> Result<(), TransportError> {
            self.written.extend_from_slice(data);
            Ok(())
        }
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
            let n = self.step.min(buf.len()).min(self.response.len() - self.at);
            buf[..n].copy_from_slice(&self.response[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
        fn close(&mut self) {
            self.closed += 1;
        }
    }

    #[test]
    fn exchange_reads_until_complete() {
        for step in [1, 7, 4096] {
            let mut t = Scripted {
                response: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
                at: 0,
                step,
                written: Vec::new(),
                opened: 0,
                closed: 0,
            };
            let req = Request {
                method: Method::Get,
                path: "/",
                host: "h",
                headers: &[],
                body: b"",
            };
            let r = exchange(&mut t, &req, &Limits::default()).unwrap();
            assert_eq!(r.body, b"{}");
            assert_eq!((t.opened, t.closed), (1, 1));
            assert!(t.written.starts_with(b"GET / HTTP/1.1\r\n"));
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the parser, and never yield a body over the limit.
        #[test]
        fn arbitrary_input_is_handled(data in proptest::collection::vec(any::<u8>(), 0..2048), eof: bool) {
            let limits = Limits { max_head: 512, max_headers: 8, max_body: 256 };
            if let Ok(Some(r)) = parse_response(&data, eof, &limits) {
                prop_assert!(r.body.len() <= 256);
            }
        }

        /// A valid chunked response parses the same however it is chunked.
        #[test]
        fn chunking_does_not_change_the_body(body in proptest::collection::vec(any::<u8>(), 0..600), cuts in proptest::collection::vec(1usize..64, 0..20)) {
            let mut msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            let mut rest = &body[..];
            for c in cuts {
                if rest.is_empty() { break; }
                let n = c.min(rest.len());
                msg.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                msg.extend_from_slice(&rest[..n]);
                msg.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            if !rest.is_empty() {
                msg.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
                msg.extend_from_slice(rest);
                msg.extend_from_slice(b"\r\n");
            }
            msg.extend_from_slice(b"0\r\n\r\n");
            let r = parse_response(&msg, false, &Limits::default()).unwrap().unwrap();
            prop_assert_eq!(r.body, body);
        }
    }
}
