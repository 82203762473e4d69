//! The workstation's door, on loopback: this machine's users and tests, trusted. Bytes pass to
//! moto as they come, on one upstream connection per client connection; requests are framed
//! (by `cgcloud_core::http`) only to count them, to tell the controller what changed no later
//! than moto hears of it, and to answer the proxy's own paths (its counters, spot
//! interruptions) and console reads.

use super::ec2::{console_request, console_response, query_params};
use super::{notify, Door, Event, Interruption, INTERRUPT_PATH, REQUESTS, STATS_PATH};
use cgcloud_core::http::{self, Limits, Request};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Bytes held while looking for a request's end; past this, or at bytes that are not a request
/// this door can frame, they are passed on unread (moto decides what they are).
const PASS_ON: usize = 8 * 1024 * 1024;
/// The body's length is not limited here: a body longer than [`PASS_ON`] is passed on unread.
const LIMITS: Limits = Limits { max_head: PASS_ON, max_body: usize::MAX };

/// Relays one workstation connection to moto (`outbound`).
pub(super) async fn relay(inbound: TcpStream, outbound: TcpStream, door: &Door) {
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
            if pass_requests(&mut pending, &mut so, &co_up, door).await.is_err() {
                return;
            }
        }
        if !pending.is_empty() && so.write_all(&pending).await.is_err() {
            return;
        }
        // The client is done sending: moto may answer and close. Nothing to do if it fails.
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
        // moto is done answering; the client's half closes too, failing only if already gone.
        let _ = co.lock().await.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// Passes on (or answers) the complete requests at the start of `pending`, each parsed before
/// it is forwarded, so that the controller hears about a power change no later than moto does.
async fn pass_requests(
    pending: &mut Vec<u8>,
    moto: &mut OwnedWriteHalf,
    client: &Mutex<OwnedWriteHalf>,
    door: &Door,
) -> std::io::Result<()> {
    loop {
        let (req, len) = match http::parse_request(pending, LIMITS) {
            Ok(Some(r)) => r,
            Ok(None) if pending.len() <= PASS_ON => return Ok(()),
            // Anything this door cannot frame (not our clients' HTTP/1.1 with a
            // Content-Length) is passed on.
            Ok(None) | Err(_) => {
                moto.write_all(pending).await?;
                pending.clear();
                return Ok(());
            }
        };
        REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        notify(&door.events, &req.body);
        // Clients wait for each answer before the next request, so an answer of our own
        // cannot overtake one of moto's.
        match own_answer(&req, door) {
            Some(answer) => client.lock().await.write_all(&answer).await?,
            None => moto.write_all(&pending[..len]).await?,
        }
        pending.drain(..len);
    }
}

/// The proxy's own answer to `req`, if it gives one.
fn own_answer(req: &Request, door: &Door) -> Option<Vec<u8>> {
    match (req.head.method.as_str(), req.head.target.as_str()) {
        ("GET", STATS_PATH) => Some(stats_response()),
        ("POST", INTERRUPT_PATH) => Some(interrupt_response(&req.body, door)),
        _ => console_request(&req.body).and_then(|id| console_response(&door.dir, &id)),
    }
}

fn json_response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    http::response(status, reason, &[("Content-Type", "application/json")], body.as_bytes())
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
    let (true, "terminate" | "stop", Some(notice)) = (valid_id, action, notice) else {
        let error = serde_json::json!({"error": "instance, action (terminate|stop) and notice (0-3600 s) are needed"});
        return json_response(400, "Bad Request", &error.to_string());
    };
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(notice);
    let doc =
        serde_json::json!({"action": action, "time": humantime::format_rfc3339_seconds(at).to_string()}).to_string();
    match door.imds.lock() {
        Ok(mut r) => {
            r.interruptions.insert(id.to_owned(), doc.clone());
        }
        Err(_) => return json_response(500, "Internal Server Error", r#"{"error": "IMDS's registry is poisoned"}"#),
    }
    let interruption = Interruption { instance_id: id.to_owned(), action: action.to_owned(), at };
    if let Err(e) = door.events.send(Event::Interrupt(interruption)) {
        tracing::warn!("proxy: the controller did not take {:?}", e.0);
        return json_response(503, "Service Unavailable", r#"{"error": "the controller is shutting down"}"#);
    }
    json_response(200, "OK", &doc)
}

/// The counters, as JSON over HTTP.
fn stats_response() -> Vec<u8> {
    let body = format!("{{\"requests\": {}}}", REQUESTS.load(std::sync::atomic::Ordering::Relaxed));
    json_response(200, "OK", &body)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{door, next_answer, serve_on_loopback};
    use super::super::{PowerEvent, Side};
    use super::*;

    /// A stand-in for moto on loopback: answers each request with its body, then closes.
    async fn echo_upstream() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut data, mut buf) = (Vec::new(), [0u8; 4096]);
                    loop {
                        if let Ok(Some((req, len))) = http::parse_request(&data, LIMITS) {
                            data.drain(..len);
                            conn.write_all(&http::response(200, "OK", &[], &req.body)).await.unwrap();
                            continue;
                        }
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => data.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        port
    }

    /// Pipelined requests through the workstation's door: the proxy's own answer, and moto's
    /// in order; the controller hears of a power change before moto answers it.
    #[tokio::test]
    async fn the_workstations_door_relays_and_answers_its_own() {
        let (events, mut heard) = tokio::sync::mpsc::unbounded_channel();
        let door = door(Side::Workstation, echo_upstream().await, events).await;
        let mut conn = TcpStream::connect(serve_on_loopback(door).await).await.unwrap();
        let stop = "Action=StopInstances&InstanceId.1=i-1";
        let requests =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{stop}GET {STATS_PATH} HTTP/1.1\r\n\r\n", stop.len());
        conn.write_all(requests.as_bytes()).await.unwrap();
        let mut data = Vec::new();
        let answers = [next_answer(&mut conn, &mut data).await, next_answer(&mut conn, &mut data).await];
        // Our own answer may overtake moto's here: this client did not wait for the first.
        assert!(answers.iter().any(|a| a.ends_with(stop)), "{answers:?}");
        assert!(answers.iter().any(|a| a.contains("\"requests\"")), "{answers:?}");
        assert_eq!(heard.recv().await, Some(Event::Power(PowerEvent::Stop("i-1".into()))));
        assert_eq!(heard.recv().await, Some(Event::Changed));
    }
}
