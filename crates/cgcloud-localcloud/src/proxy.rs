//! The API front door of the local cloud. Every request to the emulated AWS endpoint passes
//! through here to moto unchanged, with three exceptions: the proxy reads EC2 requests that
//! change what the controller realizes (instances, images, volumes) and tells it at once, so
//! that an idle controller need not poll (and power changes, which moto makes instantly, are
//! seen even when a stop is followed at once by a start); it answers `GetConsoleOutput` itself
//! with the host's real console (moto's is a fixed text), as EC2 does: cloud-init prints the
//! instance's SSH host keys there, which is how tools that launch instances themselves (the
//! Jenkins EC2 plugin) verify them; and it answers `GET /cgcloud-local/stats` with the number
//! of requests it has passed (`cgcloud local status` reports the rate).
//!
//! It has two doors. The workstation's, on loopback, passes everything (the tests and `local`
//! commands use moto's own paths). The guests', on the bridge, is the only way a box reaches
//! the API, and a box's root is not the cloud's administrator: it takes one strictly parsed
//! request at a time (no chunked bodies, no duplicate or malformed lengths, no folded
//! headers), passes only the AWS API at `/` (never `/moto-api/*` or any other moto path, never
//! the proxy's own counters), and sends each request to moto on a connection of its own, so
//! no second request can hide in the bytes of a first one that moto would read differently.

use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

/// EC2 returns at most the last 64 KiB of an instance's console.
const CONSOLE_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerEvent {
    Stop(String),
    Start(String),
    Reboot(String),
}

/// What the proxy tells the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Power(PowerEvent),
    /// A request that may change what the controller realizes passed (see [`changes`]).
    Changed,
    /// This machine interrupted a spot instance.
    Interrupt(Interruption),
}

/// Requests passed to moto since the controller started (all listeners).
pub static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The path at which the proxy answers with its own counters.
pub const STATS_PATH: &str = "/cgcloud-local/stats";
/// The path at which this machine interrupts a spot instance (`cgcloud local interrupt`):
/// a form body with `instance`, `action` (`terminate` or `stop`) and `notice` (seconds).
pub const INTERRUPT_PATH: &str = "/cgcloud-local/interrupt";

/// A spot interruption: the notice is in the instance's IMDS from now, and the controller
/// carries out `action` at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interruption {
    pub instance_id: String,
    pub action: String,
    pub at: std::time::SystemTime,
}

/// Which door a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Loopback: this machine's users and tests.
    Workstation,
    /// The bridge: the hosts.
    Guests,
}

/// A door of the proxy and what its connections need.
#[derive(Clone)]
pub struct Door {
    pub side: Side,
    /// moto's port on loopback.
    pub upstream_port: u16,
    pub events: mpsc::UnboundedSender<Event>,
    /// The local cloud's directory (hosts' consoles).
    pub dir: PathBuf,
    /// The credentials IMDS issued, which the guests' door accepts.
    pub imds: crate::imds::Shared,
    /// moto as the administrator: what authorizing a guest's request looks up.
    pub cloud: cgcloud_aws::Cloud,
    /// The roles' policies the guests' door evaluates requests against.
    pub policies: crate::iam::Policies,
}

/// Serves `listener` through `door`.
pub async fn serve(listener: TcpListener, door: Door) {
    let slots = Arc::new(tokio::sync::Semaphore::new(GUEST_CONNECTIONS));
    loop {
        let slot = match door.side {
            Side::Guests => match slots.clone().acquire_owned().await {
                Ok(s) => Some(s),
                Err(_) => return,
            },
            Side::Workstation => None,
        };
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let door = door.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match door.side {
                Side::Guests => serve_guest(inbound, &door).await,
                Side::Workstation => {
                    if let Ok(outbound) = TcpStream::connect(("127.0.0.1", door.upstream_port)).await {
                        relay(inbound, outbound, &door).await;
                    }
                }
            }
        });
    }
}

/// The largest request head and body a guest may send (EC2's own limits are lower; user data
/// is at most 16 KiB, a RunInstances well under 1 MiB).
const GUEST_MAX_HEAD: usize = 64 * 1024;
const GUEST_MAX_BODY: usize = 1024 * 1024;
/// Guest connections served at once (all guests together), so that guests cannot make the
/// controller hold unbounded memory; more wait to be accepted.
const GUEST_CONNECTIONS: usize = 512;

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
        let values: Vec<&str> =
            self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
        (!values.is_empty()).then(|| values.join(","))
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

/// A request head, parsed.
#[derive(Debug)]
pub struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    length: usize,
    close: bool,
    expect_continue: bool,
}

/// Parses a request head (the bytes before the blank line), strictly.
pub fn parse_head(head: &[u8]) -> Result<Head, Refusal> {
    let head = std::str::from_utf8(head).map_err(|_| Refusal::Malformed("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed("bad request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Refusal::Malformed("not HTTP/1.x"));
    }
    if !matches!(method, "GET" | "POST") {
        return Err(Refusal::Malformed("method other than GET or POST"));
    }
    // Visible ASCII only: a control character here would be a header line to moto.
    if !target.starts_with('/') || !target.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(Refusal::Malformed("bad request target"));
    }
    let mut headers = Vec::new();
    let mut length: Option<usize> = None;
    let mut close = version == "HTTP/1.0";
    let mut expect_continue = false;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err(Refusal::Malformed("folded header line"));
        }
        let (name, value) = line.split_once(':').ok_or(Refusal::Malformed("header line without ':'"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Refusal::Malformed("bad header name"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(Refusal::Malformed("bad header value"));
        }
        let value = value.trim();
        // The controller's own marks to moto (a spot interruption) are not a guest's to make.
        if name.to_ascii_lowercase().starts_with("x-cgcloud-") {
            return Err(Refusal::Malformed("X-Cgcloud- headers are the local cloud's own"));
        }
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                if length.is_some() {
                    return Err(Refusal::Malformed("more than one Content-Length"));
                }
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 9 {
                    return Err(Refusal::Malformed("bad Content-Length"));
                }
                length = Some(value.parse().map_err(|_| Refusal::Malformed("bad Content-Length"))?);
            }
            "transfer-encoding" => return Err(Refusal::Malformed("Transfer-Encoding (send a Content-Length)")),
            "connection" => close |= value.eq_ignore_ascii_case("close"),
            "expect" => expect_continue |= value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    let length = length.unwrap_or(0);
    if length > GUEST_MAX_BODY {
        return Err(Refusal::Malformed("request body too large"));
    }
    Ok(Head { method: method.to_owned(), target: target.to_owned(), headers, length, close, expect_continue })
}

/// Parses one request from the start of `data`: `Ok(None)` if more bytes are needed, else the
/// request and its length.
pub fn parse_guest_request(data: &[u8]) -> Result<Option<(GuestRequest, usize)>, Refusal> {
    let Some(head_end) = find_head_end(data, 0) else {
        return if data.len() > GUEST_MAX_HEAD { Err(Refusal::Malformed("request head too large")) } else { Ok(None) };
    };
    let head = parse_head(&data[..head_end])?;
    complete(head, data, head_end)
}

/// Where the head that starts `data` ends (the blank line), looking from `from` on.
fn find_head_end(data: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    data.get(start..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|p| start + p).filter(|e| *e <= GUEST_MAX_HEAD)
}

/// The request of `head` if its body is all in `data`.
fn complete(head: Head, data: &[u8], head_end: usize) -> Result<Option<(GuestRequest, usize)>, Refusal> {
    let end = head_end + 4 + head.length;
    if data.len() < end {
        return Ok(None);
    }
    // The AWS query and JSON protocols the boxes speak all POST (or GET) to `/`.
    let path = head.target.split('?').next().unwrap_or_default();
    if path != "/" {
        return Err(Refusal::Forbidden(path.chars().take(200).collect(), end));
    }
    let request = GuestRequest {
        method: head.method,
        target: head.target,
        headers: head.headers,
        body: data[head_end + 4..end].to_vec(),
        close: head.close,
    };
    Ok(Some((request, end)))
}

/// AWS's answer to a request it will not serve.
fn access_denied(what: &str) -> Vec<u8> {
    Denied { status: 403, code: "AccessDenied", message: what.to_owned(), ec2: true }.response(false)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Answers a malformed request and closes as HTTP servers do (a lingering close): our side is
/// shut first, and what the client still sends is read and dropped for a moment, so that the
/// client reads the answer instead of a reset (which would also kill a shell writing to the
/// socket with SIGPIPE).
async fn refuse_and_close(inbound: &mut TcpStream, why: &str) {
    if inbound.write_all(&bad_request(why)).await.is_err() {
        return;
    }
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
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

fn bad_request(why: &str) -> Vec<u8> {
    let body = format!("{why}\n");
    format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// One guest connection: a request at a time, each to moto on a fresh connection. The head is
/// parsed once, when its blank line has arrived; the body is then only counted.
async fn serve_guest(mut inbound: TcpStream, door: &Door) {
    let (upstream_port, events, dir) = (door.upstream_port, &door.events, door.dir.as_path());
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // (where the head ends, the head) once it has been parsed; how far the head was searched.
    let mut parsed: Option<(usize, Head)> = None;
    let mut searched = 0;
    loop {
        if parsed.is_none() {
            match find_head_end(&pending, searched) {
                Some(end) => match parse_head(&pending[..end]) {
                    Ok(head) => {
                        let waits = pending.len() < end + 4 + head.length;
                        if head.expect_continue
                            && waits
                            && inbound.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
                        {
                            return;
                        }
                        parsed = Some((end, head));
                    }
                    // A head alone is refused only as malformed.
                    Err(e) => {
                        let why = if let Refusal::Malformed(why) = e { why } else { "bad request" };
                        refuse_and_close(&mut inbound, why).await;
                        return;
                    }
                },
                None if pending.len() > GUEST_MAX_HEAD => {
                    refuse_and_close(&mut inbound, "request head too large").await;
                    return;
                }
                None => searched = pending.len(),
            }
        }
        let ready = match parsed.take() {
            Some((end, head)) => {
                let needed = end + 4 + head.length;
                if pending.len() < needed {
                    parsed = Some((end, head));
                    None
                } else {
                    Some(complete(head, &pending, end))
                }
            }
            None => None,
        };
        let Some(outcome) = ready else {
            match inbound.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
            continue;
        };
        searched = 0;
        let (req, len) = match outcome {
            Ok(Some(r)) => r,
            // `complete` is called only once the body is all there.
            Ok(None) => return,
            Err(Refusal::Forbidden(path, len)) => {
                pending.drain(..len.min(pending.len()));
                if inbound
                    .write_all(&access_denied(&format!("{path}: not an AWS API of this cloud; boxes reach only /")))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Err(Refusal::Malformed(why)) => {
                refuse_and_close(&mut inbound, why).await;
                return;
            }
        };
        pending.drain(..len);
        REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let checked = match authenticate(&req, &door.imds, std::time::SystemTime::now()) {
            Ok(who) => authorize(&req, &who, door).await,
            Err(denied) => Err(denied),
        };
        if let Err(denied) = checked {
            crate::controller::log(format!("guest request refused: {}: {}", denied.code, denied.message));
            let json = req.header("x-amz-target").is_some();
            if inbound.write_all(&denied.response(json)).await.is_err() || req.close {
                return;
            }
            continue;
        }
        let answer = match console_request(&req.body).and_then(|id| console_response(dir, &id)) {
            Some(own) => own,
            None => match forward_one(&req, upstream_port).await {
                Some(a) => a,
                None => return,
            },
        };
        // Only what moto carried out: a refused or dry-run StopInstances naming a peer must not
        // power it off. The client waits for this answer before its next request, so the
        // controller still hears of a stop before the start that may follow it.
        if answer.starts_with(b"HTTP/1.1 2") || answer.starts_with(b"HTTP/1.0 2") {
            for ev in power_events(&req.body) {
                let _ = events.send(Event::Power(ev));
            }
            if changes(&req.body) {
                let _ = events.send(Event::Changed);
            }
        }
        // An answer without a length ends where the connection does.
        let (answer, delimited) = rewrite_connection(answer);
        if inbound.write_all(&answer).await.is_err() || req.close || !delimited {
            return;
        }
    }
}

/// A request the guests' door refuses, with AWS's error code for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// EC2's error document, or the other query services'.
    pub ec2: bool,
}

impl Denied {
    /// A denial with EC2's code `code_ec2` for EC2 requests and `code` for the others'.
    fn new(ec2: bool, status: u16, code_ec2: &'static str, code: &'static str, message: String) -> Denied {
        Denied { status, code: if ec2 { code_ec2 } else { code }, message, ec2 }
    }

    /// The answer, in the JSON protocol's form for a request that came in it (`json`: SQS's,
    /// with the query-compatible code header its SDKs read) and in XML otherwise.
    fn response(&self, json: bool) -> Vec<u8> {
        let reason = match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            503 => "Service Unavailable",
            _ => "Forbidden",
        };
        if json {
            let body =
                serde_json::json!({"__type": format!("com.amazonaws.sqs#{}", self.code), "message": self.message})
                    .to_string();
            let kind = if self.status >= 500 { "Receiver" } else { "Sender" };
            return format!(
                "HTTP/1.1 {} {reason}\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-query-error: {};{kind}\r\nContent-Length: {}\r\n\r\n{body}",
                self.status,
                self.code,
                body.len()
            )
            .into_bytes();
        }
        let message = xml_escape(&self.message);
        let body = if self.ec2 {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{message}</Message></Error></Errors><RequestID>cgcloud-local</RequestID></Response>",
                self.code
            )
        } else {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ErrorResponse><Error><Type>Sender</Type><Code>{}</Code><Message>{message}</Message></Error><RequestId>cgcloud-local</RequestId></ErrorResponse>",
                self.code
            )
        };
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }
}

/// The most a request's signing time may differ from the proxy's clock, as AWS allows.
const MAX_SKEW: u64 = 15 * 60;

/// Who signed a guest's request, and for what.
#[derive(Debug)]
pub struct Signer {
    pub issued: crate::imds::Issued,
    /// The credential scope's service (SigV4 signing name) and region.
    pub service: String,
    pub region: String,
    /// The headers the signature covers (lower case).
    pub signed_headers: Vec<String>,
}

/// Checks a guest's request: signed (SigV4) with credentials IMDS issued, unexpired, with
/// their session token, and the signature computed over exactly the headers the client says
/// it signed.
pub fn authenticate(
    req: &GuestRequest,
    imds: &crate::imds::Shared,
    now: std::time::SystemTime,
) -> Result<Signer, Denied> {
    let auth = req.header("authorization").unwrap_or_default();
    let service = auth.split("Credential=").nth(1).and_then(|c| c.split('/').nth(3)).unwrap_or_default().to_owned();
    let ec2 = service == "ec2" || service.is_empty();
    let deny = |status, code_ec2, code, message| Denied::new(ec2, status, code_ec2, code, message);
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(deny(
            401,
            "AuthFailure",
            "MissingAuthenticationToken",
            "the request is not signed with AWS Signature Version 4; boxes sign with their instance profile's credentials from IMDS".into(),
        ));
    };
    let field = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_default()
            .to_owned()
    };
    let (credential, signed, signature) = (field("Credential"), field("SignedHeaders"), field("Signature"));
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, region, _service, "aws4_request"] = scope.as_slice() else {
        return Err(deny(403, "AuthFailure", "IncompleteSignature", "the credential scope is malformed".into()));
    };
    let Some(issued) = imds.lock().ok().and_then(|r| r.credentials.get(*key).cloned()) else {
        return Err(deny(
            401,
            "AuthFailure",
            "InvalidClientTokenId",
            format!("the security token included in the request is invalid ({key} was not issued to an instance of this cloud)"),
        ));
    };
    let now_secs = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if issued.expires <= now_secs {
        return Err(deny(
            400,
            "RequestExpired",
            "ExpiredToken",
            "the security token included in the request is expired".into(),
        ));
    }
    // The token may travel in the query string too (presigned requests).
    let query_token = req
        .target
        .split_once('?')
        .map(|(_, q)| query_params(q.as_bytes()))
        .and_then(|p| p.into_iter().find(|(k, _)| k == "X-Amz-Security-Token").map(|(_, v)| v));
    let token = req.header("x-amz-security-token").or(query_token);
    if token.as_deref() != Some(issued.session_token.as_str()) {
        return Err(deny(
            401,
            "AuthFailure",
            "InvalidClientTokenId",
            "the session token does not belong to the access key".into(),
        ));
    }
    let amz_date = req.header("x-amz-date").unwrap_or_default();
    let signed_at = humantime::parse_rfc3339(&format!(
        "{}-{}-{}T{}:{}:{}Z",
        amz_date.get(0..4).unwrap_or("x"),
        amz_date.get(4..6).unwrap_or("x"),
        amz_date.get(6..8).unwrap_or("x"),
        amz_date.get(9..11).unwrap_or("x"),
        amz_date.get(11..13).unwrap_or("x"),
        amz_date.get(13..15).unwrap_or("x"),
    ))
    .ok()
    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    .map(|d| d.as_secs());
    match signed_at {
        Some(t) if t.abs_diff(now_secs) <= MAX_SKEW && amz_date.starts_with(date) => {}
        _ => {
            return Err(deny(
                403,
                "RequestExpired",
                "SignatureDoesNotMatch",
                "the request's X-Amz-Date is missing, malformed, or more than 15 minutes from the server's time".into(),
            ))
        }
    }
    // The headers the client signed, in its order, canonicalized; host must be one of them.
    let names: Vec<&str> = signed.split(';').filter(|n| !n.is_empty()).collect();
    if !names.contains(&"host") {
        return Err(deny(403, "AuthFailure", "SignatureDoesNotMatch", "the host header is not signed".into()));
    }
    let mut headers = Vec::with_capacity(names.len());
    for name in &names {
        let Some(v) = req.header(name) else {
            return Err(deny(
                403,
                "AuthFailure",
                "SignatureDoesNotMatch",
                format!("signed header '{name}' is missing"),
            ));
        };
        headers.push(((*name).to_owned(), v.split_whitespace().collect::<Vec<_>>().join(" ")));
    }
    let payload_hash = cgcloud_core::sigv4::payload_hash(&req.body);
    if req.header("x-amz-content-sha256").is_some_and(|h| h != payload_hash) {
        return Err(deny(
            403,
            "AuthFailure",
            "SignatureDoesNotMatch",
            "x-amz-content-sha256 is not the body's hash".into(),
        ));
    }
    let (path, query) = req.target.split_once('?').unwrap_or((req.target.as_str(), ""));
    let canonical = cgcloud_core::sigv4::Canonical {
        method: &req.method,
        path,
        query: &canonical_query(query),
        headers: &headers,
        payload_hash: &payload_hash,
    };
    let want = cgcloud_core::sigv4::signature(&canonical, &issued.secret_access_key, &amz_date, &scope[1..].join("/"));
    if !constant_time_eq(want.as_bytes(), signature.as_bytes()) {
        return Err(deny(
            403,
            "AuthFailure",
            "SignatureDoesNotMatch",
            "the request signature we calculated does not match the signature you provided".into(),
        ));
    }
    Ok(Signer {
        service: service.clone(),
        region: (*region).to_owned(),
        signed_headers: names.iter().map(|n| (*n).to_owned()).collect(),
        issued,
    })
}

/// Evaluates a signed guest request against its instance profile's policies (see
/// [`crate::iam`]), as IAM would; denied as EC2 and the other services deny.
async fn authorize(req: &GuestRequest, who: &Signer, door: &Door) -> Result<(), Denied> {
    use crate::iam::Unevaluated;
    let ec2 = who.service == "ec2";
    let deny = |status, code_ec2, code, message| Denied::new(ec2, status, code_ec2, code, message);
    let issued = &who.issued;
    let caller = crate::iam::Caller {
        instance_id: issued.instance_id.clone(),
        region: who.region.clone(),
        account: issued.role_arn.split(':').nth(4).unwrap_or_default().to_owned(),
    };
    let signed: Vec<&str> = who.signed_headers.iter().map(String::as_str).collect();
    let evaluated = async {
        let call = crate::iam::Call::parse(req, &who.service, &signed)?;
        let requests = crate::iam::requests(&call, &caller, &door.cloud).await?;
        Ok::<_, Unevaluated>((call, requests))
    };
    let (call, requests) = match evaluated.await {
        Ok(x) => x,
        Err(Unevaluated::Malformed(why)) => {
            return Err(deny(400, "InvalidParameterValue", "InvalidParameterValue", why));
        }
        Err(Unevaluated::Unmodelled(why)) => {
            return Err(deny(
                403,
                "UnauthorizedOperation",
                "AccessDenied",
                format!("{why} (the local cloud denies what it cannot evaluate as IAM would)"),
            ));
        }
        Err(Unevaluated::Lookup(why)) => {
            return Err(deny(503, "Unavailable", "ServiceUnavailable", format!("cannot authorize the request: {why}")));
        }
    };
    let policy = door
        .policies
        .of(&door.cloud, &issued.role_name)
        .await
        .map_err(|why| deny(403, "UnauthorizedOperation", "AccessDenied", why))?;
    match crate::iam::first_denied(&policy, &requests) {
        None => Ok(()),
        Some(r) => Err(deny(
            403,
            "UnauthorizedOperation",
            "AccessDenied",
            format!(
                "You are not authorized to perform this operation. User: arn:aws:sts::{}:assumed-role/{}/{} is not authorized to perform: {} on resource: {} ({} of instance {})",
                caller.account, issued.role_name, issued.instance_id, r.action, r.resource, call.action, issued.instance_id
            ),
        )),
    }
}

/// A query string in SigV4's canonical form: parameters sorted, each encoded once.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("X-Amz-Signature="))
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (cgcloud_core::sigv4::uri_encode(&url_decode(k)), cgcloud_core::sigv4::uri_encode(&url_decode(v)))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sends one request to moto on a connection of its own and returns moto's answer.
async fn forward_one(req: &GuestRequest, upstream_port: u16) -> Option<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream_port)).await.ok()?;
    let mut out = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    const HOP: &[&str] =
        &["content-length", "connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer", "expect"];
    for (k, v) in req.headers.iter().filter(|(k, _)| !HOP.contains(&k.to_ascii_lowercase().as_str())) {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", req.body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&req.body);
    up.write_all(&bytes).await.ok()?;
    // Read the answer by its length, not to the end of the stream: moto's server closes its
    // side some milliseconds after the last byte (measured: 11 ms a request).
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = up.read(&mut buf).await.ok()?;
        if n == 0 {
            return Some(answer);
        }
        answer.extend_from_slice(&buf[..n]);
        let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
        // An interim 100 Continue is followed by the real answer.
        if head.starts_with("http/1.1 100") {
            answer.drain(..head_end + 4);
            continue;
        }
        let length =
            head.lines().find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()));
        if let Some(length) = length {
            if answer.len() >= head_end + 4 + length {
                answer.truncate(head_end + 4 + length);
                return Some(answer);
            }
        }
    }
}

/// Drops moto's `Connection: close` from an answer with a Content-Length (the guest's
/// connection stays open; moto's was for one request only). Returns the answer and whether it
/// has a length (else it ends with the connection).
fn rewrite_connection(answer: Vec<u8>) -> (Vec<u8>, bool) {
    let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else { return (answer, false) };
    let Ok(head) = std::str::from_utf8(&answer[..head_end]) else { return (answer, false) };
    if !head.to_ascii_lowercase().contains("\r\ncontent-length:") {
        return (answer, false);
    }
    let kept: Vec<&str> = head.split("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")).collect();
    let mut out = kept.join("\r\n").into_bytes();
    out.extend_from_slice(&answer[head_end..]);
    (out, true)
}

async fn relay(inbound: TcpStream, outbound: TcpStream, door: &Door) {
    let (events, dir) = (door.events.clone(), door.dir.as_path());
    let (mut ci, co) = inbound.into_split();
    let (mut si, mut so) = outbound.into_split();
    // Both directions answer the client: moto's responses, and the proxy's own.
    let co = Arc::new(Mutex::new(co));
    let co_up = co.clone();
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match ci.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            // Parse complete requests before forwarding them, so that the controller hears
            // about a power change no later than moto does.
            while let Some((len, body)) = complete_request(&pending) {
                REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for ev in power_events(&body) {
                    let _ = events.send(Event::Power(ev));
                }
                if changes(&body) {
                    let _ = events.send(Event::Changed);
                }
                // Clients wait for each answer before the next request, so an answer of our
                // own cannot overtake one of moto's.
                let own = if pending.starts_with(format!("GET {STATS_PATH} ").as_bytes()) {
                    Some(stats_response())
                } else if pending.starts_with(format!("POST {INTERRUPT_PATH} ").as_bytes()) {
                    Some(interrupt_response(&body, door))
                } else {
                    console_request(&body).and_then(|id| console_response(dir, &id))
                };
                if let Some(answer) = own {
                    if co_up.lock().await.write_all(&answer).await.is_err() {
                        return;
                    }
                } else if so.write_all(&pending[..len]).await.is_err() {
                    return;
                }
                pending.drain(..len);
            }
            // Anything unparseable (not our clients' HTTP/1.1 with Content-Length) is passed on.
            if pending.len() > 8 * 1024 * 1024 {
                if so.write_all(&pending).await.is_err() {
                    return;
                }
                pending.clear();
            }
        }
        if !pending.is_empty() {
            let _ = so.write_all(&pending).await;
        }
        let _ = so.shutdown().await;
    };
    let downstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match si.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if co.lock().await.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = co.lock().await.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// If `data` starts with a complete HTTP request, its total length and its body.
fn complete_request(data: &[u8]) -> Option<(usize, Vec<u8>)> {
    let head_end = data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    // A length near usize::MAX (from anyone who can reach the proxy) must not overflow.
    let end = head_end.checked_add(len)?;
    if data.len() < end {
        return None;
    }
    Some((end, data[head_end..end].to_vec()))
}

pub(crate) fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            // Bytes, not string slices: a request from a guest may put anything after '%'.
            b'%' => match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b&c=d`, decoded; a key without `=` has an empty value.
pub(crate) fn query_params(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

/// The instance of a `GetConsoleOutput` request, if `body` is one and names a plausible id
/// (the id becomes part of a path: anything else is left to moto).
pub fn console_request(body: &[u8]) -> Option<String> {
    let params = query_params(body);
    let action = params.iter().find(|(k, _)| k == "Action").map(|(_, v)| v.as_str());
    if action != Some("GetConsoleOutput") {
        return None;
    }
    let id = params.into_iter().find(|(k, _)| k == "InstanceId").map(|(_, v)| v)?;
    let hex = id.strip_prefix("i-")?;
    (!hex.is_empty() && hex.len() <= 17 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
}

/// EC2's answer to GetConsoleOutput for a host of the local cloud: the end of its console
/// log, base64-encoded; None for an instance that never ran here (moto answers then).
fn console_response(dir: &Path, id: &str) -> Option<Vec<u8>> {
    // Only the tail is read: a guest writes its console, and could make it large.
    let tail = {
        use std::io::{Read as _, Seek as _};
        let mut f = std::fs::File::open(dir.join("instances").join(id).join("console.log")).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(std::io::SeekFrom::Start(len.saturating_sub(CONSOLE_MAX as u64))).ok()?;
        let mut tail = Vec::with_capacity(CONSOLE_MAX);
        f.take(CONSOLE_MAX as u64).read_to_end(&mut tail).ok()?;
        tail
    };
    let tail = tail.as_slice();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<GetConsoleOutputResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>cgcloud-local-console</requestId><instanceId>{id}</instanceId><timestamp>{}</timestamp>\
         <output>{}</output></GetConsoleOutputResponse>",
        rfc3339(now),
        base64::engine::general_purpose::STANDARD.encode(tail)
    );
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\nx-amzn-requestid: cgcloud-local-console\r\n\r\n",
        body.len()
    );
    Some([head.into_bytes(), body.into_bytes()].concat())
}

/// `secs` since the epoch as `YYYY-MM-DDThh:mm:ss.000Z` (UTC).
fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

/// Publishes a spot interruption notice (see [`INTERRUPT_PATH`]) and tells the controller.
fn interrupt_response(body: &[u8], door: &Door) -> Vec<u8> {
    let params = query_params(body);
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap_or_default();
    let (id, action) = (get("instance"), get("action"));
    let notice = get("notice").parse::<u64>().ok().filter(|n| *n <= 3600);
    let valid_id = id
        .strip_prefix("i-")
        .is_some_and(|h| !h.is_empty() && h.len() <= 17 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let reply = |status: &str, body: String| {
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .into_bytes()
    };
    let (true, "terminate" | "stop", Some(notice)) = (valid_id, action, notice) else {
        return reply(
            "400 Bad Request",
            serde_json::json!({"error": "instance, action (terminate|stop) and notice (0-3600 s) are needed"})
                .to_string(),
        );
    };
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(notice);
    let doc =
        serde_json::json!({"action": action, "time": humantime::format_rfc3339_seconds(at).to_string()}).to_string();
    if let Ok(mut r) = door.imds.lock() {
        r.interruptions.insert(id.to_owned(), doc.clone());
    }
    let _ =
        door.events.send(Event::Interrupt(Interruption { instance_id: id.to_owned(), action: action.to_owned(), at }));
    reply("200 OK", doc)
}

/// The counters, as JSON over HTTP.
fn stats_response() -> Vec<u8> {
    let body = format!("{{\"requests\": {}}}", REQUESTS.load(std::sync::atomic::Ordering::Relaxed));
    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// EC2 actions after which the controller has something to realize: security groups' rules
/// and memberships; instances that appear, change power or go; images made or removed;
/// volumes made, attached, detached or deleted.
const CHANGING: &[&str] = &[
    "AuthorizeSecurityGroupIngress",
    "RevokeSecurityGroupIngress",
    "ModifyInstanceAttribute",
    "ModifyNetworkInterfaceAttribute",
    "DeleteSecurityGroup",
    "RunInstances",
    "StartInstances",
    "StopInstances",
    "RebootInstances",
    "TerminateInstances",
    "RequestSpotInstances",
    "CancelSpotInstanceRequests",
    "CreateFleet",
    "CreateImage",
    "RegisterImage",
    "CopyImage",
    "DeregisterImage",
    "CreateVolume",
    "AttachVolume",
    "DetachVolume",
    "DeleteVolume",
];

/// Whether an EC2 query-protocol request body is one of the [`CHANGING`] actions.
pub fn changes(body: &[u8]) -> bool {
    // Cheap first: most requests (agents' queue polls, describes) are not EC2 mutations.
    let text = String::from_utf8_lossy(body);
    let Some(action) = text.split('&').find_map(|kv| kv.strip_prefix("Action=")) else { return false };
    CHANGING.contains(&action)
}

/// The power events in an EC2 query-protocol request body.
pub fn power_events(body: &[u8]) -> Vec<PowerEvent> {
    let params = query_params(body);
    let action = params.iter().find(|(k, _)| k == "Action").map(|(_, v)| v.as_str());
    let make: fn(String) -> PowerEvent = match action {
        Some("StopInstances") => PowerEvent::Stop,
        Some("StartInstances") => PowerEvent::Start,
        Some("RebootInstances") => PowerEvent::Reboot,
        _ => return Vec::new(),
    };
    params.into_iter().filter(|(k, _)| k.starts_with("InstanceId.")).map(|(_, v)| make(v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits docs/security.md names, at their edges: a guest's request body of 1 MiB is
    /// taken and one byte more refused; a console read returns only its last 64 KiB.
    #[test]
    fn guest_bodies_and_console_reads_are_bounded() {
        let req = |len: usize| format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        assert!(parse_guest_request(req(GUEST_MAX_BODY).as_bytes()).is_ok_and(|r| r.is_none()), "waits for the body");
        assert!(matches!(
            parse_guest_request(req(GUEST_MAX_BODY + 1).as_bytes()),
            Err(Refusal::Malformed("request body too large"))
        ));
        let dir = tempfile::tempdir().unwrap();
        let id = "i-0123456789abcdef0";
        std::fs::create_dir_all(dir.path().join("instances").join(id)).unwrap();
        let mut log = vec![b'a'; 100 * 1024];
        log.extend_from_slice(b"THE END");
        std::fs::write(dir.path().join("instances").join(id).join("console.log"), &log).unwrap();
        let answer = String::from_utf8(console_response(dir.path(), id).unwrap()).unwrap();
        let b64 = answer.split("<output>").nth(1).unwrap().split("</output>").next().unwrap();
        let tail = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(tail.len(), CONSOLE_MAX);
        assert!(tail.ends_with(b"THE END"));
    }

    #[test]
    fn parses_power_actions() {
        let body = b"Action=StopInstances&Version=2016-11-15&InstanceId.1=i-abc&InstanceId.2=i-def";
        assert_eq!(power_events(body), vec![PowerEvent::Stop("i-abc".into()), PowerEvent::Stop("i-def".into())]);
        assert_eq!(power_events(b"Action=RebootInstances&InstanceId.1=i-1"), vec![PowerEvent::Reboot("i-1".into())]);
        assert!(power_events(b"Action=DescribeInstances&InstanceId.1=i-1").is_empty());
        assert!(power_events(b"").is_empty());
    }

    #[test]
    fn wakes_the_controller_for_changes_only() {
        assert!(changes(b"Action=RunInstances&Version=2016-11-15&MinCount=1"));
        assert!(changes(b"Version=2016-11-15&Action=CreateImage&InstanceId=i-1"));
        assert!(changes(b"Action=AttachVolume&VolumeId=vol-1"));
        assert!(!changes(b"Action=DescribeInstances&Version=2016-11-15"));
        assert!(!changes(b"Action=CreateTags&ResourceId.1=i-1"));
        assert!(!changes(b"Action=RunInstancesX"));
        assert!(!changes(b"{\"QueueUrl\": \"Action=RunInstances\"}"));
        assert!(!changes(b""));
    }

    #[test]
    fn finds_request_boundaries() {
        let req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST";
        let (len, body) = complete_request(req).unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(len, req.len() - 4);
        assert!(complete_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel").is_none());
        assert_eq!(complete_request(b"GET / HTTP/1.1\r\n\r\n").unwrap().1, b"");
        assert_eq!(url_decode("a%2Fb+c"), "a/b c");
    }

    #[test]
    fn answers_console_requests_for_its_hosts() {
        assert_eq!(
            console_request(b"Action=GetConsoleOutput&Version=2016-11-15&InstanceId=i-0abc12"),
            Some("i-0abc12".into())
        );
        assert_eq!(console_request(b"Action=GetConsoleOutput&InstanceId=i-..%2F..%2Fetc"), None);
        assert_eq!(console_request(b"Action=GetConsoleOutput&InstanceId=vol-1"), None);
        assert_eq!(console_request(b"Action=DescribeInstances&InstanceId=i-1"), None);
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("instances/i-0abc12");
        std::fs::create_dir_all(&host).unwrap();
        let mut log = vec![b'x'; CONSOLE_MAX];
        log.extend_from_slice(
            b"\n-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3 root@h\n-----END SSH HOST KEY KEYS-----\n",
        );
        std::fs::write(host.join("console.log"), &log).unwrap();
        let answer = String::from_utf8(console_response(dir.path(), "i-0abc12").unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains(&format!("Content-Length: {}", body.len())));
        let b64 = body.split("<output>").nth(1).unwrap().split("</output>").next().unwrap();
        let text = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(text.len(), CONSOLE_MAX, "only the last 64 KiB, as EC2 keeps");
        assert!(
            String::from_utf8_lossy(&text).ends_with("ssh-ed25519 AAAAC3 root@h\n-----END SSH HOST KEY KEYS-----\n")
        );
        assert!(console_response(dir.path(), "i-ffff").is_none(), "moto answers for instances that never ran here");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_237_789), "2026-12-02T18:56:29.000Z");
    }

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
            Err(Refusal::Malformed("bad request target"))
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

    #[test]
    fn answers_keep_the_guests_connection_open() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec();
        assert_eq!(rewrite_connection(a), (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), true));
        let no_len = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok".to_vec();
        assert_eq!(rewrite_connection(no_len.clone()), (no_len, false));
        assert!(String::from_utf8(access_denied("/moto-api/<x>")).unwrap().contains("&lt;x&gt;"));
    }

    fn signed(
        issued_key: &str,
        issued: &crate::imds::Issued,
        body: &[u8],
        when: u64,
        token: Option<&str>,
    ) -> GuestRequest {
        let creds = cgcloud_core::sigv4::Credentials {
            access_key_id: issued_key.to_owned(),
            secret_access_key: issued.secret_access_key.clone(),
            session_token: Some(token.unwrap_or(&issued.session_token).to_owned()),
        };
        let ct = "application/x-www-form-urlencoded; charset=utf-8";
        let h = cgcloud_core::sigv4::sign(
            "POST",
            "/",
            "",
            &[("host", "10.199.0.1:5401"), ("content-type", ct)],
            body,
            "us-west-2",
            "ec2",
            &creds,
            &cgcloud_core::sigv4::amz_date(when),
        );
        let mut headers =
            vec![("Host".to_owned(), "10.199.0.1:5401".to_owned()), ("Content-Type".to_owned(), ct.to_owned())];
        headers.extend(h);
        GuestRequest { method: "POST".into(), target: "/".into(), headers, body: body.to_vec(), close: false }
    }

    #[test]
    fn guests_must_sign_with_credentials_imds_issued() {
        let dir = tempfile::tempdir().unwrap();
        let imds = crate::imds::Shared::default();
        let (key, issued) = {
            let mut r = imds.lock().unwrap();
            crate::imds::credentials_for(&mut r, dir.path(), "i-1", "box", "arn:aws:iam::123456789012:role/box")
                .unwrap()
        };
        let now = std::time::SystemTime::now();
        let secs = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let body = b"Action=DescribeInstances&Version=2016-11-15";
        let ok = signed(&key, &issued, body, secs, None);
        let who = authenticate(&ok, &imds, now).unwrap();
        assert_eq!(
            (who.issued.instance_id.as_str(), who.service.as_str(), who.region.as_str()),
            ("i-1", "ec2", "us-west-2")
        );
        assert_eq!(who.signed_headers, ["content-type", "host", "x-amz-date", "x-amz-security-token"]);
        // Each way of getting it wrong, with AWS's code.
        let mut tampered = signed(&key, &issued, body, secs, None);
        tampered.body = b"Action=TerminateInstances&Version=2016-11-15&InstanceId.1=i-2".to_vec();
        assert_eq!(authenticate(&tampered, &imds, now).unwrap_err().code, "AuthFailure");
        let wrong_token = signed(&key, &issued, body, secs, Some("not-the-token"));
        assert_eq!(authenticate(&wrong_token, &imds, now).unwrap_err().code, "AuthFailure");
        let unknown = signed("ASIAUNKNOWN", &issued, body, secs, None);
        assert!(authenticate(&unknown, &imds, now).unwrap_err().message.contains("not issued"));
        let stale = signed(&key, &issued, body, secs - 3600, None);
        assert_eq!(authenticate(&stale, &imds, now).unwrap_err().code, "RequestExpired");
        let unsigned = GuestRequest { headers: Vec::new(), ..signed(&key, &issued, body, secs, None) };
        assert_eq!(authenticate(&unsigned, &imds, now).unwrap_err().status, 401);
        // The local cloud's own key, known to all, is not accepted from a guest.
        let admin = crate::imds::Issued { secret_access_key: crate::SECRET_KEY.into(), ..issued.clone() };
        assert!(authenticate(&signed(crate::ACCESS_KEY, &admin, body, secs, None), &imds, now).is_err());
        // Expired credentials.
        imds.lock().unwrap().credentials.get_mut(&key).unwrap().expires = secs - 1;
        assert_eq!(authenticate(&ok, &imds, now).unwrap_err().code, "RequestExpired");
        // Other services answer with their own codes and error document.
        let d = Denied { status: 403, code: "SignatureDoesNotMatch", message: "<x>".into(), ec2: false };
        let text = String::from_utf8(d.response(false)).unwrap();
        let json = String::from_utf8(d.response(true)).unwrap();
        assert!(json.contains("x-amzn-query-error: SignatureDoesNotMatch;Sender\r\n"), "{json}");
        let body: serde_json::Value = serde_json::from_str(json.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            (body["__type"].as_str(), body["message"].as_str()),
            (Some("com.amazonaws.sqs#SignatureDoesNotMatch"), Some("<x>"))
        );
        assert!(text.contains("<ErrorResponse>") && text.contains("&lt;x&gt;") && text.starts_with("HTTP/1.1 403"));
        assert_eq!(canonical_query("b=2&a=1%2F"), "a=1%2F&b=2");
    }

    /// What a guest can send the controller's API front door must never panic it.
    #[test]
    fn hostile_requests_do_not_panic() {
        for s in ["%é", "%", "%4", "%%%", "%4é", "é%41", "%zz", "a%2"] {
            let _ = url_decode(s);
        }
        assert_eq!(url_decode("%é"), "%é");
        assert_eq!(url_decode("é%41"), "éA");
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\nx";
        assert!(complete_request(huge).is_none());
        let body = "Action=StopInstances&InstanceId.1=i-%C3%A9%&InstanceId.%é=x".as_bytes();
        assert_eq!(power_events(body), vec![PowerEvent::Stop("i-é%".into()), PowerEvent::Stop("x".into())]);
    }
}
