//! The one HTTP/1.1 layer of the local cloud's servers (the API proxy, IMDS) and of the test
//! harness's (the fault proxy, the fake query APIs): parsing requests and moto's responses out
//! of byte buffers, and writing requests and responses. No I/O: each server reads and writes
//! its own socket and calls this with what it has read so far, which also makes headers split
//! across reads and pipelined requests a matter of buffers only.
//!
//! Tokenizing is httparse's (strict by default: one space between the request line's parts, no
//! folded headers, HTTP/1.0 or 1.1 only). What it leaves open is closed here, because guests are
//! untrusted and what this layer accepts is forwarded to moto, whose own parser must read the
//! same request: line ends are CRLF only, the head is UTF-8, the target is visible ASCII and
//! starts with `/`, header names are letters, digits, `-` and `_`, values carry no control
//! characters, a body has exactly one plain decimal Content-Length and never a Transfer-Encoding
//! (no user sends chunked requests), and heads and bodies have limits. Hyper would bring its own
//! connection loop and leniencies, and each user here needs its own loop (a lingering close, a
//! fresh upstream connection per request, blocking threads in the tests).

/// The largest head and body a server reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_head: usize,
    pub max_body: usize,
}

/// Why a request is refused; the connection it came on cannot be read further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("{0}")]
    Malformed(&'static str),
}

impl HttpError {
    /// The reason as a static text (what a 400 answer says).
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::HeadTooLarge => "request head too large",
            HttpError::BodyTooLarge => "request body too large",
            HttpError::Malformed(why) => why,
        }
    }
}

/// A request head, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// Header lines as sent (names as sent, values trimmed), in order.
    pub headers: Vec<(String, String)>,
    /// The body's length (0 without a Content-Length).
    pub content_length: usize,
    /// HTTP/1.0, or `Connection: close`.
    pub close: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// A whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head: RequestHead,
    pub body: Vec<u8>,
}

/// The value of header `name` (case-insensitive) among `headers`; repeated headers joined with
/// commas, as SigV4 canonicalizes them.
pub fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    let values: Vec<&str> =
        headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
    (!values.is_empty()).then(|| values.join(","))
}

impl RequestHead {
    /// See [`header`].
    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.headers, name)
    }
}

/// Where the head that starts `data` ends (the start of its blank line), looking from `from`
/// on (what an earlier call searched need not be searched again); None if not within
/// `max_head` bytes yet.
pub fn find_head_end(data: &[u8], from: usize, max_head: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    data.get(start..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|p| start + p).filter(|e| *e <= max_head)
}

/// Parses a request head (`head`: the bytes before the blank line), strictly (see the module's
/// header); a body longer than `max_body` is refused here, before it is read.
pub fn parse_request_head(head: &[u8], max_body: usize) -> Result<RequestHead, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed("request head is not UTF-8"))?;
    // httparse also takes a bare LF as a line end; moto might not.
    let bare = text.bytes().enumerate().any(|(i, b)| match b {
        b'\r' => head.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || head[i - 1] != b'\r',
        _ => false,
    });
    if bare {
        return Err(HttpError::Malformed("bare CR or LF in the request head"));
    }
    let mut full = Vec::with_capacity(head.len() + 4);
    full.extend_from_slice(head);
    full.extend_from_slice(b"\r\n\r\n");
    // A header a line: as many slots as lines, so that httparse has no limit of its own.
    let mut slots = vec![httparse::EMPTY_HEADER; text.matches('\n').count() + 1];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(&full) {
        Ok(httparse::Status::Complete(n)) if n == full.len() => {}
        Ok(_) => return Err(HttpError::Malformed("bad request line")),
        Err(e) => return Err(HttpError::Malformed(httparse_reason(e))),
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("bad request line"));
    };
    // Visible ASCII only: a control character here would be a header line to moto.
    if !target.starts_with('/') || !target.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(HttpError::Malformed("bad request target"));
    }
    let mut out = RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        headers: Vec::with_capacity(req.headers.len()),
        content_length: 0,
        close: version == 0,
        expect_continue: false,
    };
    let mut length: Option<usize> = None;
    for h in req.headers.iter() {
        let (name, value) = (h.name, checked_value(h.value)?);
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(HttpError::Malformed("bad header name"));
        }
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                if length.is_some() {
                    return Err(HttpError::Malformed("more than one Content-Length"));
                }
                length = Some(content_length(value)?);
            }
            "transfer-encoding" => return Err(HttpError::Malformed("Transfer-Encoding (send a Content-Length)")),
            "connection" => out.close |= value.eq_ignore_ascii_case("close"),
            "expect" => out.expect_continue |= value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
        out.headers.push((name.to_owned(), value.to_owned()));
    }
    out.content_length = length.unwrap_or(0);
    if out.content_length > max_body {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(out)
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "bad header name",
        httparse::Error::HeaderValue => "bad header value",
        httparse::Error::Version => "not HTTP/1.x",
        httparse::Error::Token => "bad method or request target",
        _ => "bad request line",
    }
}

/// A header value, trimmed, if it has no control characters (but tabs).
fn checked_value(value: &[u8]) -> Result<&str, HttpError> {
    if value.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return Err(HttpError::Malformed("bad header value"));
    }
    std::str::from_utf8(value).map(str::trim).map_err(|_| HttpError::Malformed("bad header value"))
}

/// A Content-Length: digits only (no sign, no spaces, no list), at most nine of them.
fn content_length(value: &str) -> Result<usize, HttpError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 9 {
        return Err(HttpError::Malformed("bad Content-Length"));
    }
    value.parse().map_err(|_| HttpError::Malformed("bad Content-Length"))
}

/// Parses one request from the start of `data`: `Ok(None)` if more bytes are needed, else the
/// request and its length (what follows it is the next request on a kept-alive connection).
pub fn parse_request(data: &[u8], limits: Limits) -> Result<Option<(Request, usize)>, HttpError> {
    let Some(head_end) = find_head_end(data, 0, limits.max_head) else {
        return if data.len() > limits.max_head { Err(HttpError::HeadTooLarge) } else { Ok(None) };
    };
    let head = parse_request_head(&data[..head_end], limits.max_body)?;
    Ok(request_with_body(head, data, head_end))
}

/// The request of `head` (whose blank line starts at `head_end` in `data`) with its body, if
/// the body is all in `data`; and the request's length.
pub fn request_with_body(head: RequestHead, data: &[u8], head_end: usize) -> Option<(Request, usize)> {
    let end = head_end + 4 + head.content_length;
    let body = data.get(head_end + 4..end)?.to_vec();
    Some((Request { head, body }, end))
}

/// Headers a proxy does not forward: they are about one connection (RFC 9110 7.6.1), or the
/// body's framing, which the proxy writes itself.
const HOP_BY_HOP: &[&str] =
    &["content-length", "connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer", "expect"];

/// A request as it goes to an upstream connection that carries only this request:
/// the hop-by-hop headers replaced by the body's length and `Connection: close`.
pub fn forward_request(method: &str, target: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in headers.iter().filter(|(k, _)| !HOP_BY_HOP.contains(&k.to_ascii_lowercase().as_str())) {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A response: status line, `headers`, the body's Content-Length, the body.
pub fn response(status: u16, reason: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// How much of an upstream response (moto's) a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseProgress {
    /// More bytes are needed.
    Partial,
    /// An interim `100 Continue` of this length comes first: drop it and look again.
    Continue(usize),
    /// The response is the first this many bytes.
    Complete(usize),
    /// The response has no Content-Length: it ends with the connection.
    ToEnd,
}

/// How much of a response `data` holds. Moto answers with a Content-Length; a response read
/// by it is done without waiting for moto to close (measured: 11 ms a request).
pub fn response_progress(data: &[u8]) -> ResponseProgress {
    let Some(head_end) = data.windows(4).position(|w| w == b"\r\n\r\n") else { return ResponseProgress::Partial };
    let head = &data[..head_end + 4];
    let lines = head.iter().filter(|b| **b == b'\n').count();
    let mut slots = vec![httparse::EMPTY_HEADER; lines + 1];
    let mut res = httparse::Response::new(&mut slots);
    // A response httparse cannot read is passed on as it comes, to the end.
    let Ok(httparse::Status::Complete(_)) = res.parse(head) else { return ResponseProgress::ToEnd };
    if res.code == Some(100) {
        return ResponseProgress::Continue(head.len());
    }
    let length = res
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
    match length.and_then(|l| l.checked_add(head.len())) {
        Some(end) if data.len() >= end => ResponseProgress::Complete(end),
        Some(_) => ResponseProgress::Partial,
        None => ResponseProgress::ToEnd,
    }
}

/// Drops an upstream's `Connection` headers from a whole response with a Content-Length (the
/// client's connection stays open; the upstream one was for one request only). Returns the
/// response and whether it has a length (else it ends with the connection, which must close).
pub fn keep_alive(response: Vec<u8>) -> (Vec<u8>, bool) {
    let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { return (response, false) };
    let Ok(head) = std::str::from_utf8(&response[..head_end]) else { return (response, false) };
    if !head.to_ascii_lowercase().contains("\r\ncontent-length:") {
        return (response, false);
    }
    let kept: Vec<&str> = head.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
    let mut out = kept.join("\r\n").into_bytes();
    out.extend_from_slice(&response[head_end..]);
    (out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_head: 64 * 1024, max_body: 1024 * 1024 };

    #[test]
    fn parses_a_request() {
        let data =
            b"POST /?x=1 HTTP/1.1\r\nHost: h\r\nX-Amz-Date: 1\r\nx-amz-date: 2\r\nContent-Length: 5\r\n\r\nhello";
        let (req, len) = parse_request(data, LIMITS).unwrap().unwrap();
        assert_eq!(len, data.len());
        assert_eq!((req.head.method.as_str(), req.head.target.as_str()), ("POST", "/?x=1"));
        assert_eq!(req.head.header("HOST").as_deref(), Some("h"));
        assert_eq!(req.head.header("x-amz-date").as_deref(), Some("1,2"), "repeated headers joined");
        assert_eq!(req.head.headers[0], ("Host".to_owned(), "h".to_owned()), "names as sent");
        assert_eq!(req.body, b"hello");
        assert!(!req.head.close && !req.head.expect_continue);
        let (req, _) = parse_request(b"GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", LIMITS).unwrap().unwrap();
        assert!(req.head.close && req.head.expect_continue && req.body.is_empty());
        let (req, _) = parse_request(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", LIMITS).unwrap().unwrap();
        assert!(req.head.close);
    }

    /// A server appends each read to its buffer and asks again: any split must give the same
    /// request, and no split may give one early.
    #[test]
    fn heads_and_bodies_split_across_reads() {
        let data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
        let whole = parse_request(data, LIMITS).unwrap().unwrap();
        for cut in 0..data.len() {
            assert_eq!(parse_request(&data[..cut], LIMITS), Ok(None), "cut at {cut}");
        }
        // The incremental search a socket loop does finds the same end.
        let mut searched = 0;
        let mut found = None;
        for cut in 1..=data.len() {
            found = find_head_end(&data[..cut], searched, LIMITS.max_head);
            if found.is_some() {
                break;
            }
            searched = cut;
        }
        assert_eq!(found, find_head_end(data, 0, LIMITS.max_head));
        assert_eq!(parse_request(data, LIMITS).unwrap().unwrap(), whole);
    }

    #[test]
    fn pipelined_requests_follow_each_other() {
        let data = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nabGET /x HTTP/1.1\r\n\r\nPOST";
        let (first, len) = parse_request(data, LIMITS).unwrap().unwrap();
        assert_eq!(first.body, b"ab");
        let (second, len2) = parse_request(&data[len..], LIMITS).unwrap().unwrap();
        assert_eq!((second.head.target.as_str(), len + len2), ("/x", data.len() - 4));
        assert_eq!(parse_request(&data[len + len2..], LIMITS), Ok(None));
    }

    #[test]
    fn limits_are_kept() {
        let req = |len: usize| format!("POST / HTTP/1.1\r\nContent-Length: {len}\r\n\r\n");
        assert_eq!(parse_request(req(LIMITS.max_body).as_bytes(), LIMITS), Ok(None), "waits for the body");
        assert_eq!(parse_request(req(LIMITS.max_body + 1).as_bytes(), LIMITS), Err(HttpError::BodyTooLarge));
        assert_eq!(parse_request(&vec![b'a'; LIMITS.max_head + 1], LIMITS), Err(HttpError::HeadTooLarge));
        assert_eq!(parse_request(&vec![b'a'; LIMITS.max_head], LIMITS), Ok(None));
        // A blank line past the limit does not make a head.
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.extend(vec![b'a'; LIMITS.max_head]);
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&long, LIMITS), Err(HttpError::HeadTooLarge));
        assert_eq!(HttpError::BodyTooLarge.to_string(), HttpError::BodyTooLarge.reason());
    }

    #[test]
    fn lengths_must_be_single_and_plain() {
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad, LIMITS), Err(HttpError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let (req, _) = parse_request(b"POST / HTTP/1.1\r\n\r\n", LIMITS).unwrap().unwrap();
        assert_eq!(req.head.content_length, 0, "no Content-Length: no body");
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            &b"POST /\tX-Injected:1 HTTP/1.1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"POST  / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/2\r\n\r\n",
            b"POST http://x/ HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\nX: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"POST / HTTP/1.1\r\nX.Y: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nX: a\x7f\r\n\r\n",
            b"POST / HTTP/1.1\r\nX: \xff\r\n\r\n",
            b"POST / HTTP/1.1\r\nno colon\r\n\r\n",
            b"POST /\xc3\xa9 HTTP/1.1\r\n\r\n",
            b"\r\n\r\nPOST / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad, LIMITS), Err(HttpError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn forwards_without_hop_by_hop_headers() {
        let (req, _) = parse_request(
            b"POST / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab",
            LIMITS,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            forward_request(&req.head.method, &req.head.target, &req.head.headers, &req.body),
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nab"
        );
        assert_eq!(
            response(200, "OK", &[("Content-Type", "text/plain")], b"hi"),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        );
    }

    #[test]
    fn reads_responses_by_their_length() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        assert_eq!(response_progress(ok), ResponseProgress::Complete(ok.len()));
        assert_eq!(response_progress(&ok[..ok.len() - 1]), ResponseProgress::Partial);
        assert_eq!(response_progress(b"HTTP/1.1 200 OK\r\n"), ResponseProgress::Partial);
        let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert_eq!(response_progress(cont), ResponseProgress::Continue(cont.len()));
        assert_eq!(response_progress(b"HTTP/1.1 200 OK\r\n\r\nto the end"), ResponseProgress::ToEnd);
        let huge = b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n";
        assert_eq!(response_progress(huge), ResponseProgress::ToEnd);
        assert_eq!(keep_alive(ok.to_vec()), (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), true));
        let no_len = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok".to_vec();
        assert_eq!(keep_alive(no_len.clone()), (no_len, false));
    }
}
