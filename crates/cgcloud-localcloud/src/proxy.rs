//! The API front door of the local cloud. Every request to the emulated AWS endpoint passes
//! through here to moto unchanged; the proxy only reads EC2 requests that change an
//! instance's power state (stop, start, reboot) and tells the controller at once. moto changes
//! states instantly, so a stop followed by a start would otherwise be invisible to a poller.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerEvent {
    Stop(String),
    Start(String),
    Reboot(String),
}

/// Serves `listener`, forwarding each connection to moto on `upstream_port`.
pub async fn serve(listener: TcpListener, upstream_port: u16, events: mpsc::UnboundedSender<PowerEvent>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        let events = events.clone();
        tokio::spawn(async move {
            if let Ok(outbound) = TcpStream::connect(("127.0.0.1", upstream_port)).await {
                relay(inbound, outbound, events).await;
            }
        });
    }
}

async fn relay(inbound: TcpStream, outbound: TcpStream, events: mpsc::UnboundedSender<PowerEvent>) {
    let (mut ci, mut co) = inbound.into_split();
    let (mut si, mut so) = outbound.into_split();
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
                for ev in power_events(&body) {
                    let _ = events.send(ev);
                }
                if so.write_all(&pending[..len]).await.is_err() {
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
        let _ = tokio::io::copy(&mut si, &mut co).await;
        let _ = co.shutdown().await;
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

/// The power events in an EC2 query-protocol request body.
pub fn power_events(body: &[u8]) -> Vec<PowerEvent> {
    let text = String::from_utf8_lossy(body);
    let params: Vec<(String, String)> =
        text.split('&').filter_map(|kv| kv.split_once('=').map(|(k, v)| (url_decode(k), url_decode(v)))).collect();
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
    fn finds_request_boundaries() {
        let req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST";
        let (len, body) = complete_request(req).unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(len, req.len() - 4);
        assert!(complete_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel").is_none());
        assert_eq!(complete_request(b"GET / HTTP/1.1\r\n\r\n").unwrap().1, b"");
        assert_eq!(url_decode("a%2Fb+c"), "a/b c");
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
