//! The guests' door: the only way a box reaches the API. It reads one strictly parsed request
//! at a time (`cgcloud_core::http`, plus this door's rules: GET or POST to `/` only, none of
//! the local cloud's own `X-Cgcloud-` headers), has it authenticated and authorized
//! ([`super::auth`]), and sends it to moto on a connection of its own, so that no second
//! request can hide in the bytes of a first one that moto would read differently.

use super::auth::{authenticate, authorize, Denied};
use super::ec2::{console_request, console_response};
use super::{notify, Door, REQUESTS};
use cgcloud_core::http::{self, HttpError, RequestHead, ResponseProgress};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The largest request head and body a guest may send (EC2's own limits are lower; user data
/// is at most 16 KiB, a RunInstances well under 1 MiB).
const GUEST_MAX_HEAD: usize = 64 * 1024;
const GUEST_MAX_BODY: usize = 1024 * 1024;
/// How long a refused client's last bytes are read and dropped before its connection closes.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// A request as the guests' door accepts it.
#[derive(Debug, PartialEq, Eq)]
pub struct GuestRequest {
    pub method: String,
    pub target: String,
    /// Header lines as sent (names as sent; the signature check needs them all). The
    /// hop-by-hop ones are dropped when the request is forwarded.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub close: bool,
}

impl GuestRequest {
    /// The value of header `name` (case-insensitive); repeated headers joined with commas, as
    /// SigV4 canonicalizes them.
    pub fn header(&self, name: &str) -> Option<String> {
        http::header(&self.headers, name)
    }
}

/// Why the guests' door refused a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not well-formed HTTP/1.1 as AWS clients send it: the connection is closed.
    Malformed(&'static str),
    /// Well-formed, but not the AWS API: answered with AWS's AccessDenied. The request's
    /// length, to skip it.
    Forbidden(String, usize),
}

impl From<HttpError> for Refusal {
    fn from(e: HttpError) -> Refusal {
        Refusal::Malformed(e.reason())
    }
}

/// Parses a request head (the bytes before the blank line) as the guests' door accepts it.
fn parse_head(head: &[u8]) -> Result<RequestHead, Refusal> {
    let head = http::parse_request_head(head, GUEST_MAX_BODY)?;
    if !matches!(head.method.as_str(), "GET" | "POST") {
        return Err(Refusal::Malformed("method other than GET or POST"));
    }
    // The controller's own marks to moto (a spot interruption) are not a guest's to make.
    if head.headers.iter().any(|(k, _)| k.to_ascii_lowercase().starts_with("x-cgcloud-")) {
        return Err(Refusal::Malformed("X-Cgcloud- headers are the local cloud's own"));
    }
    Ok(head)
}

/// Parses one request from the start of `data`: `Ok(None)` if more bytes are needed, else the
/// request and its length.
pub fn parse_guest_request(data: &[u8]) -> Result<Option<(GuestRequest, usize)>, Refusal> {
    let Some(head_end) = http::find_head_end(data, 0, GUEST_MAX_HEAD) else {
        return if data.len() > GUEST_MAX_HEAD { Err(HttpError::HeadTooLarge.into()) } else { Ok(None) };
    };
    let head = parse_head(&data[..head_end])?;
    complete(head, data, head_end)
}

/// The request of `head` if its body is all in `data`.
fn complete(head: RequestHead, data: &[u8], head_end: usize) -> Result<Option<(GuestRequest, usize)>, Refusal> {
    let Some((req, end)) = http::request_with_body(head, data, head_end) else { return Ok(None) };
    // The AWS query and JSON protocols the boxes speak all POST (or GET) to `/`.
    let path = req.head.target.split('?').next().unwrap_or_default();
    if path != "/" {
        return Err(Refusal::Forbidden(path.chars().take(200).collect(), end));
    }
    let request = GuestRequest {
        method: req.head.method,
        target: req.head.target,
        headers: req.head.headers,
        body: req.body,
        close: req.head.close,
    };
    Ok(Some((request, end)))
}

/// AWS's answer to a request it will not serve.
fn access_denied(what: &str) -> Vec<u8> {
    Denied { status: 403, code: "AccessDenied", message: what.to_owned(), ec2: true }.response(false)
}

/// Answers a malformed request and closes as HTTP servers do (a lingering close): our side is
/// shut first, and what the client still sends is read and dropped for a moment, so that the
/// client reads the answer instead of a reset (which would also kill a shell writing to the
/// socket with SIGPIPE).
async fn refuse_and_close(inbound: &mut TcpStream, why: &str) {
    let body = format!("{why}\n");
    let answer = http::response(400, "Bad Request", &[("Connection", "close")], body.as_bytes());
    if inbound.write_all(&answer).await.is_err() {
        return;
    }
    // Closing regardless: a failed shutdown leaves nothing to do.
    let _ = inbound.shutdown().await;
    let mut sink = [0u8; 8192];
    let drain = async {
        let mut total = 0usize;
        while let Ok(n) = inbound.read(&mut sink).await {
            total += n;
            if n == 0 || total > GUEST_MAX_HEAD {
                break;
            }
        }
    };
    // The linger ends either way.
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// What the next request on a guest connection came to.
enum Next {
    Request(GuestRequest),
    /// Well-formed but not the API (answered, the connection kept).
    Forbidden(String),
    /// The connection is done with (closed by the guest, or refused and closed here).
    Closed,
}

/// Reads more of a guest's connection into `pending`; false at its end.
async fn read_more(inbound: &mut TcpStream, pending: &mut Vec<u8>, buf: &mut [u8]) -> bool {
    match inbound.read(buf).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            pending.extend_from_slice(&buf[..n]);
            true
        }
    }
}

/// Reads the next request of a guest connection; what follows it stays in `pending`. The head
/// is parsed once, when its blank line has arrived; the body is then only counted.
async fn next_request(inbound: &mut TcpStream, pending: &mut Vec<u8>, buf: &mut [u8]) -> Next {
    let mut searched = 0;
    let end = loop {
        match http::find_head_end(pending, searched, GUEST_MAX_HEAD) {
            Some(end) => break end,
            None if pending.len() > GUEST_MAX_HEAD => {
                refuse_and_close(inbound, HttpError::HeadTooLarge.reason()).await;
                return Next::Closed;
            }
            None => searched = pending.len(),
        }
        if !read_more(inbound, pending, buf).await {
            return Next::Closed;
        }
    };
    let head = match parse_head(&pending[..end]) {
        Ok(head) => head,
        // A head alone is refused only as malformed.
        Err(e) => {
            let why = if let Refusal::Malformed(why) = e { why } else { "bad request" };
            refuse_and_close(inbound, why).await;
            return Next::Closed;
        }
    };
    let needed = end + 4 + head.content_length;
    if head.expect_continue
        && pending.len() < needed
        && inbound.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
    {
        return Next::Closed;
    }
    while pending.len() < needed {
        if !read_more(inbound, pending, buf).await {
            return Next::Closed;
        }
    }
    match complete(head, pending, end) {
        Ok(Some((req, len))) => {
            pending.drain(..len);
            Next::Request(req)
        }
        // The body is all there: `complete` has it.
        Ok(None) => Next::Closed,
        Err(Refusal::Forbidden(path, len)) => {
            pending.drain(..len.min(pending.len()));
            Next::Forbidden(path)
        }
        Err(Refusal::Malformed(why)) => {
            refuse_and_close(inbound, why).await;
            Next::Closed
        }
    }
}

/// One guest connection: a request at a time, each to moto on a fresh connection.
pub(super) async fn serve(mut inbound: TcpStream, door: &Door) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let req = match next_request(&mut inbound, &mut pending, &mut buf).await {
            Next::Request(req) => req,
            Next::Forbidden(path) => {
                let denied = access_denied(&format!("{path}: not an AWS API of this cloud; boxes reach only /"));
                if inbound.write_all(&denied).await.is_err() {
                    return;
                }
                continue;
            }
            Next::Closed => return,
        };
        if !answer(&mut inbound, &req, door).await {
            return;
        }
    }
}

/// Checks, carries out and answers one guest request; whether the connection stays open.
async fn answer(inbound: &mut TcpStream, req: &GuestRequest, door: &Door) -> bool {
    REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let checked = match authenticate(req, &door.imds, std::time::SystemTime::now()) {
        Ok(who) => authorize(req, &who, door).await,
        Err(denied) => Err(denied),
    };
    if let Err(denied) = checked {
        crate::controller::log(format!("guest request refused: {}: {}", denied.code, denied.message));
        let json = req.header("x-amz-target").is_some();
        return inbound.write_all(&denied.response(json)).await.is_ok() && !req.close;
    }
    let answer = match console_request(&req.body).and_then(|id| console_response(&door.dir, &id)) {
        Some(own) => own,
        None => match forward_one(req, door.upstream_port).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("proxy: a guest's request did not reach moto: {e}");
                return false;
            }
        },
    };
    // Only what moto carried out: a refused or dry-run StopInstances naming a peer must not
    // power it off. The client waits for this answer before its next request, so the
    // controller still hears of a stop before the start that may follow it.
    if answer.starts_with(b"HTTP/1.1 2") || answer.starts_with(b"HTTP/1.0 2") {
        notify(&door.events, &req.body);
    }
    // An answer without a length ends where the connection does.
    let (answer, delimited) = http::keep_alive(answer);
    inbound.write_all(&answer).await.is_ok() && !req.close && delimited
}

/// Sends one request to moto on a connection of its own and returns moto's answer, read by its
/// length rather than to the end of the stream: moto's server closes its side some
/// milliseconds after the last byte (measured: 11 ms a request).
async fn forward_one(req: &GuestRequest, upstream_port: u16) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    up.write_all(&http::forward_request(&req.method, &req.target, &req.headers, &req.body)).await?;
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match http::response_progress(&answer) {
            ResponseProgress::Complete(end) => {
                answer.truncate(end);
                return Ok(answer);
            }
            // An interim 100 Continue is followed by the real answer.
            ResponseProgress::Continue(len) => {
                answer.drain(..len);
                continue;
            }
            ResponseProgress::Partial | ResponseProgress::ToEnd => {}
        }
        let n = up.read(&mut buf).await?;
        if n == 0 {
            return Ok(answer);
        }
        answer.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{door, next_answer, serve_on_loopback};
    use super::super::Side;
    use super::*;

    #[test]
    fn the_guests_door_passes_the_api_only() {
        let ok =
            b"POST / HTTP/1.1\r\nHost: 10.199.0.1:5401\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nAction";
        let (req, len) = parse_guest_request(ok).unwrap().unwrap();
        assert_eq!(
            (req.method.as_str(), req.target.as_str(), req.body.as_slice(), len),
            ("POST", "/", &b"Actio"[..], ok.len() - 1)
        );
        assert_eq!(req.header("host").as_deref(), Some("10.199.0.1:5401"));
        assert_eq!(req.header("content-length").as_deref(), Some("5"), "kept for signature checks");
        // A request target with a control character would be a header line to moto.
        assert!(matches!(
            parse_guest_request(b"POST /\tX-Injected:1 HTTP/1.1\r\n\r\n"),
            Err(Refusal::Malformed("bad method or request target"))
        ));
        // A refused request's length is the one this parser found: the next one follows it.
        let two = b"POST /moto-api/reset HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST / HTTP/1.1\r\n\r\n";
        match parse_guest_request(two) {
            Err(Refusal::Forbidden(path, len)) => {
                assert_eq!(path, "/moto-api/reset");
                assert!(parse_guest_request(&two[len..]).unwrap().is_some());
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_guest_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nAct").unwrap().is_none());
        assert!(parse_guest_request(b"GET /?Action=DescribeRegions HTTP/1.1\r\n\r\n").unwrap().is_some());
        for path in
            ["/moto-api/reset", "/moto-api/data.json", "/cgcloud-local/stats", "//moto-api/reset", "/bucket/key"]
        {
            let req = format!("POST {path} HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
            assert!(matches!(parse_guest_request(req.as_bytes()), Err(Refusal::Forbidden(_, _))), "{path}");
        }
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
            b"DELETE / HTTP/1.1\r\n\r\n",
            b"POST  / HTTP/1.1\r\n\r\n",
            b"POST / HTTP/2\r\n\r\n",
            b"POST / HTTP/1.1\r\nX-Cgcloud-Spot-Interruption: 1\r\n\r\n",
        ] {
            assert!(matches!(parse_guest_request(bad), Err(Refusal::Malformed(_))), "{}", String::from_utf8_lossy(bad));
        }
        assert!(matches!(parse_guest_request(&vec![b'a'; GUEST_MAX_HEAD + 1]), Err(Refusal::Malformed(_))));
    }

    /// The limit docs/security.md names, at its edge: a guest's request body of 1 MiB is taken
    /// and one byte more refused.
    #[test]
    fn guest_bodies_are_bounded() {
        let req = |len: usize| format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        assert!(parse_guest_request(req(GUEST_MAX_BODY).as_bytes()).is_ok_and(|r| r.is_none()), "waits for the body");
        assert!(matches!(
            parse_guest_request(req(GUEST_MAX_BODY + 1).as_bytes()),
            Err(Refusal::Malformed("request body too large"))
        ));
    }

    #[test]
    fn denials_are_escaped() {
        assert!(String::from_utf8(access_denied("/moto-api/<x>")).unwrap().contains("&lt;x&gt;"));
    }

    /// The door's socket loop over loopback: a head split across writes, a forbidden request
    /// and an unsigned one pipelined behind it (each answered, the connection kept), an
    /// `Expect: 100-continue` honoured, and a malformed request answered and closed.
    #[tokio::test]
    async fn the_guests_door_serves_a_connection() {
        let door = door(Side::Guests, 9, tokio::sync::mpsc::unbounded_channel().0).await;
        let mut conn = TcpStream::connect(serve_on_loopback(door).await).await.unwrap();
        let mut answers = Vec::new();
        let mut next = async |conn: &mut TcpStream| next_answer(conn, &mut answers).await;
        conn.write_all(b"POST /moto-api/reset HTTP/1.1\r\nContent-Le").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        conn.write_all(b"ngth: 2\r\n\r\nabPOST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await.unwrap();
        let forbidden = next(&mut conn).await;
        assert!(
            forbidden.starts_with("HTTP/1.1 403 Forbidden") && forbidden.contains("/moto-api/reset"),
            "{forbidden}"
        );
        let unsigned = next(&mut conn).await;
        assert!(unsigned.starts_with("HTTP/1.1 401 Unauthorized") && unsigned.contains("AuthFailure"), "{unsigned}");
        conn.write_all(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").await.unwrap();
        assert_eq!(next(&mut conn).await, "HTTP/1.1 100 Continue\r\n\r\n");
        conn.write_all(b"abc").await.unwrap();
        assert!(next(&mut conn).await.starts_with("HTTP/1.1 401"));
        conn.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
        let refused = next(&mut conn).await;
        assert!(
            refused.starts_with("HTTP/1.1 400 Bad Request")
                && refused.ends_with("Transfer-Encoding (send a Content-Length)\n")
        );
        assert_eq!(conn.read(&mut [0u8; 16]).await.unwrap(), 0, "closed after a malformed request");
    }
}
