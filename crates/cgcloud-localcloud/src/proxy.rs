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
}

/// Requests passed to moto since the controller started (all listeners).
pub static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The path at which the proxy answers with its own counters.
pub const STATS_PATH: &str = "/cgcloud-local/stats";

/// Which door a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Loopback: this machine's users and tests.
    Workstation,
    /// The bridge: the hosts.
    Guests,
}

/// Serves `listener`, forwarding each connection to moto on `upstream_port`; consoles are read
/// from the hosts' directories under `dir`.
pub async fn serve(
    listener: TcpListener,
    side: Side,
    upstream_port: u16,
    events: mpsc::UnboundedSender<Event>,
    dir: PathBuf,
) {
    let dir = Arc::new(dir);
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        let events = events.clone();
        let dir = dir.clone();
        tokio::spawn(async move {
            match side {
                Side::Guests => serve_guest(inbound, upstream_port, events, &dir).await,
                Side::Workstation => {
                    if let Ok(outbound) = TcpStream::connect(("127.0.0.1", upstream_port)).await {
                        relay(inbound, outbound, events, &dir).await;
                    }
                }
            }
        });
    }
}

/// The largest request head and body a guest may send (EC2's own limits are lower; user data
/// is at most 16 KiB, a RunInstances well under 1 MiB).
const GUEST_MAX_HEAD: usize = 64 * 1024;
const GUEST_MAX_BODY: usize = 8 * 1024 * 1024;

/// A request as the guests' door accepts it.
#[derive(Debug, PartialEq, Eq)]
pub struct GuestRequest {
    pub method: String,
    pub target: String,
    /// Header lines as sent, but the hop-by-hop ones and Content-Length.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub close: bool,
}

/// Why the guests' door refused a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not well-formed HTTP/1.1 as AWS clients send it: the connection is closed.
    Malformed(&'static str),
    /// Well-formed, but not the AWS API: answered with AWS's AccessDenied.
    Forbidden(String),
}

/// Parses one request from the start of `data`: `Ok(None)` if more bytes are needed, else the
/// request and its length.
pub fn parse_guest_request(data: &[u8]) -> Result<Option<(GuestRequest, usize)>, Refusal> {
    let Some(head_end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if data.len() > GUEST_MAX_HEAD { Err(Refusal::Malformed("request head too large")) } else { Ok(None) };
    };
    if head_end > GUEST_MAX_HEAD {
        return Err(Refusal::Malformed("request head too large"));
    }
    let head = std::str::from_utf8(&data[..head_end]).map_err(|_| Refusal::Malformed("request head is not UTF-8"))?;
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
    let mut headers = Vec::new();
    let mut length: Option<usize> = None;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err(Refusal::Malformed("folded header line"));
        }
        let (name, value) = line.split_once(':').ok_or(Refusal::Malformed("header line without ':'"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Refusal::Malformed("bad header name"));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(Refusal::Malformed("bad header value"));
        }
        let value = value.trim();
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
            "keep-alive" | "proxy-connection" | "upgrade" | "te" | "trailer" => {}
            _ => headers.push((name.to_owned(), value.to_owned())),
        }
    }
    let length = length.unwrap_or(0);
    if length > GUEST_MAX_BODY {
        return Err(Refusal::Malformed("request body too large"));
    }
    let end = head_end + 4 + length;
    if data.len() < end {
        return Ok(None);
    }
    // The AWS query and JSON protocols the boxes speak all POST (or GET) to `/`.
    let path = target.split('?').next().unwrap_or_default();
    let request = GuestRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body: data[head_end + 4..end].to_vec(),
        close,
    };
    if path != "/" {
        return Err(Refusal::Forbidden(path.chars().take(200).collect()));
    }
    Ok(Some((request, end)))
}

/// AWS's answer to a request it will not serve.
fn access_denied(what: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>AccessDenied</Code>\
         <Message>{}</Message></Error></Errors><RequestID>cgcloud-local</RequestID></Response>",
        xml_escape(what)
    );
    format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One guest connection: a request at a time, each to moto on a fresh connection.
async fn serve_guest(mut inbound: TcpStream, upstream_port: u16, events: mpsc::UnboundedSender<Event>, dir: &Path) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let parsed = parse_guest_request(&pending);
        let (req, len) = match parsed {
            Ok(Some(r)) => r,
            Ok(None) => match inbound.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    pending.extend_from_slice(&buf[..n]);
                    continue;
                }
            },
            Err(Refusal::Forbidden(path)) => {
                let _ = inbound
                    .write_all(&access_denied(&format!("{path}: not an AWS API of this cloud; boxes reach only /")))
                    .await;
                // The body's length was checked: skip the request and go on.
                match forbidden_len(&pending) {
                    Some(n) if n <= pending.len() => {
                        pending.drain(..n);
                        continue;
                    }
                    _ => return,
                }
            }
            Err(Refusal::Malformed(why)) => {
                let body = format!("{why}\n");
                let _ = inbound
                    .write_all(
                        format!(
                            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                return;
            }
        };
        pending.drain(..len);
        REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for ev in power_events(&req.body) {
            let _ = events.send(Event::Power(ev));
        }
        if changes(&req.body) {
            let _ = events.send(Event::Changed);
        }
        let answer = match console_request(&req.body).and_then(|id| console_response(dir, &id)) {
            Some(own) => own,
            None => match forward_one(&req, upstream_port).await {
                Some(a) => a,
                None => return,
            },
        };
        // An answer without a length ends where the connection does.
        let (answer, delimited) = rewrite_connection(answer);
        if inbound.write_all(&answer).await.is_err() || req.close || !delimited {
            return;
        }
    }
}

/// The length of a request refused as Forbidden (it parsed as well-formed).
fn forbidden_len(data: &[u8]) -> Option<usize> {
    complete_request(data).map(|(len, _)| len)
}

/// Sends one request to moto on a connection of its own and returns moto's answer.
async fn forward_one(req: &GuestRequest, upstream_port: u16) -> Option<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream_port)).await.ok()?;
    let mut out = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", req.body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&req.body);
    up.write_all(&bytes).await.ok()?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).await.ok()?;
    Some(answer)
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

async fn relay(inbound: TcpStream, outbound: TcpStream, events: mpsc::UnboundedSender<Event>, dir: &Path) {
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

fn url_decode(s: &str) -> String {
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

fn query_params(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&').filter_map(|kv| kv.split_once('=').map(|(k, v)| (url_decode(k), url_decode(v)))).collect()
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
    let log = std::fs::read(dir.join("instances").join(id).join("console.log")).ok()?;
    let tail = &log[log.len().saturating_sub(CONSOLE_MAX)..];
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

/// The counters, as JSON over HTTP.
fn stats_response() -> Vec<u8> {
    let body = format!("{{\"requests\": {}}}", REQUESTS.load(std::sync::atomic::Ordering::Relaxed));
    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// EC2 actions after which the controller has something to realize: instances that appear,
/// change power or go; images made or removed; volumes made, attached, detached or deleted.
const CHANGING: &[&str] = &[
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
        assert_eq!(req.headers, vec![("Host".to_owned(), "10.199.0.1:5401".to_owned())]);
        assert!(parse_guest_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nAct").unwrap().is_none());
        assert!(parse_guest_request(b"GET /?Action=DescribeRegions HTTP/1.1\r\n\r\n").unwrap().is_some());
        for path in
            ["/moto-api/reset", "/moto-api/data.json", "/cgcloud-local/stats", "//moto-api/reset", "/bucket/key"]
        {
            let req = format!("POST {path} HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
            assert!(matches!(parse_guest_request(req.as_bytes()), Err(Refusal::Forbidden(_))), "{path}");
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
