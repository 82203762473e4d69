//! A fault-injecting endpoint for tests and benchmarks: an HTTP proxy in front of moto that
//! answers chosen EC2 query actions with chosen faults after chosen counts — capacity and
//! price errors, throttling, 500s, hangs, dropped connections, and RunInstances launching
//! fewer instances than asked (as EC2 does when MinCount < MaxCount and capacity is short) —
//! and passes everything else through. Rules can be changed while a client runs, and it counts
//! requests per action and faults injected. It also holds the harness's blocking request
//! reader ([`Requests`], over `cgcloud_core::http`), which the fake query APIs use too.

use cgcloud_core::http::{self, Limits, Request, RequestHead};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a matching request gets instead of moto's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// An EC2 error response.
    Error { status: u16, code: String, message: String },
    /// moto's answer, after this long.
    Delay(Duration),
    /// The connection is closed without an answer (the request never reaches moto).
    Drop,
    /// moto carries the request out, but its answer is lost: the connection is closed (the
    /// client cannot tell whether it happened, as when a network drops mid-request).
    LoseAnswer,
    /// No answer for this long, then the connection is closed.
    Hang(Duration),
    /// RunInstances launches at most this many instances: MaxCount is lowered to it when
    /// MinCount allows, else the request fails with InsufficientInstanceCapacity.
    Partial(u32),
}

impl Fault {
    pub fn error(status: u16, code: &str) -> Fault {
        Fault::Error { status, code: code.to_owned(), message: format!("{code} (injected by testkit::fault)") }
    }
    pub fn insufficient_capacity() -> Fault {
        Fault::error(500, "InsufficientInstanceCapacity")
    }
    pub fn spot_price_too_low() -> Fault {
        Fault::error(400, "SpotMaxPriceTooLow")
    }
    pub fn throttled() -> Fault {
        Fault::error(503, "RequestLimitExceeded")
    }
    pub fn internal() -> Fault {
        Fault::error(500, "InternalError")
    }
}

/// Which requests a fault hits: of action `action` (and whose body holds every one of
/// `body_contains`, e.g. `InstanceMarketOptions.MarketType=spot`), after the first `skip`
/// matches, the next `times` ones.
#[derive(Debug, Clone)]
pub struct Rule {
    pub action: String,
    pub body_contains: Vec<String>,
    pub skip: usize,
    pub times: usize,
    pub fault: Fault,
}

impl Rule {
    /// Every request of `action`.
    pub fn always(action: &str, fault: Fault) -> Rule {
        Rule { action: action.to_owned(), body_contains: Vec::new(), skip: 0, times: usize::MAX, fault }
    }
    /// The first `times` requests of `action`.
    pub fn first(action: &str, times: usize, fault: Fault) -> Rule {
        Rule { times, ..Rule::always(action, fault) }
    }
    /// Only requests whose body holds `needle` (as sent: form-encoded), and any other needle.
    pub fn when(mut self, needle: &str) -> Rule {
        self.body_contains.push(needle.to_owned());
        self
    }
    pub fn after(mut self, skip: usize) -> Rule {
        self.skip = skip;
        self
    }
}

#[derive(Default)]
struct State {
    rules: Vec<(Rule, usize)>,
    counts: BTreeMap<String, usize>,
    injected: usize,
    /// Requests read and not yet answered (or dropped): they may still reach moto.
    in_flight: usize,
}

/// The proxy; stopped when dropped.
pub struct FaultProxy {
    /// What to point clients at (`http://127.0.0.1:PORT`).
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 in front of `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("local addr"));
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let state: Arc<Mutex<State>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s, up) = (s.clone(), upstream.clone());
                std::thread::spawn(move || serve(conn, &up, &s));
            }
        });
        FaultProxy { endpoint, state, stop }
    }

    /// Replaces the rules (their counts start again).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        if let Ok(mut s) = self.state.lock() {
            s.rules = rules.into_iter().map(|r| (r, 0)).collect();
        }
    }

    /// Requests of `action` seen so far (answered by moto or by a fault).
    pub fn count(&self, action: &str) -> usize {
        self.state.lock().map(|s| s.counts.get(action).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> usize {
        self.state.lock().map(|s| s.injected).unwrap_or(0)
    }

    /// Waits until every request the proxy has read is done with, as EC2 carries out what it
    /// received even when the client that sent it is gone: a request held by a `Delay` still
    /// reaches moto after its sender was killed. False if that takes longer than `limit`.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        loop {
            if self.state.lock().map(|s| s.in_flight == 0).unwrap_or(true) {
                return true;
            }
            if std::time::Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Counts one request as in flight until dropped.
struct InFlight<'a>(&'a Mutex<State>);

impl<'a> InFlight<'a> {
    fn new(state: &'a Mutex<State>) -> Self {
        if let Ok(mut s) = state.lock() {
            s.in_flight += 1;
        }
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.lock() {
            s.in_flight -= 1;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.endpoint.trim_start_matches("http://"));
    }
}

fn param(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_owned()))
}

/// Generous: the harness's clients are the tests' own (the old hand-written reader had none).
const LIMITS: Limits = Limits { max_head: 1024 * 1024, max_body: 64 * 1024 * 1024 };

/// The requests of a blocking connection, one after the other (kept-alive or pipelined).
pub(crate) struct Requests {
    conn: TcpStream,
    pending: Vec<u8>,
}

impl Requests {
    pub(crate) fn new(conn: TcpStream) -> Requests {
        Requests { conn, pending: Vec::new() }
    }

    /// The next request; None at the end of the connection or at a request the shared layer
    /// refuses (the connection is then dropped).
    pub(crate) fn next_request(&mut self) -> Option<Request> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some((req, len)) = http::parse_request(&self.pending, LIMITS).ok()? {
                self.pending.drain(..len);
                return Some(req);
            }
            let n = self.conn.read(&mut buf).ok().filter(|n| *n > 0)?;
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

fn serve(conn: TcpStream, upstream: &str, state: &Mutex<State>) {
    let Ok(mut out) = conn.try_clone() else { return };
    let mut requests = Requests::new(conn);
    while let Some(Request { head, mut body }) = requests.next_request() {
        let _in_flight = InFlight::new(state);
        let text = String::from_utf8_lossy(&body).into_owned();
        let action = param(&text, "Action").unwrap_or_default();
        let fault = {
            let Ok(mut s) = state.lock() else { return };
            *s.counts.entry(action.clone()).or_default() += 1;
            let mut hit = None;
            for (rule, seen) in s.rules.iter_mut() {
                let matches = rule.action == action && rule.body_contains.iter().all(|n| text.contains(n.as_str()));
                if !matches {
                    continue;
                }
                *seen += 1;
                if *seen > rule.skip && *seen - rule.skip <= rule.times {
                    hit = Some(rule.fault.clone());
                    break;
                }
            }
            if hit.is_some() {
                s.injected += 1;
            }
            hit
        };
        match fault {
            Some(Fault::Error { status, code, message }) => {
                if out.write_all(&error_response(status, &code, &message)).is_err() {
                    return;
                }
                continue;
            }
            Some(Fault::Drop) => return,
            Some(Fault::LoseAnswer) => {
                // The answer is the one thing this fault throws away.
                let _ = forward(upstream, &head, &body);
                return;
            }
            Some(Fault::Hang(d)) => {
                std::thread::sleep(d);
                return;
            }
            Some(Fault::Delay(d)) => std::thread::sleep(d),
            Some(Fault::Partial(k)) => {
                let min: u32 = param(&text, "MinCount").and_then(|v| v.parse().ok()).unwrap_or(1);
                if k < min {
                    let e = error_response(
                        500,
                        "InsufficientInstanceCapacity",
                        &format!("only {k} instances available (injected by testkit::fault)"),
                    );
                    if out.write_all(&e).is_err() {
                        return;
                    }
                    continue;
                }
                // EC2 gives k; moto launches exactly MinCount, so both say k.
                let rewritten: Vec<String> = text
                    .split('&')
                    .map(|kv| {
                        if kv.starts_with("MaxCount=") {
                            format!("MaxCount={k}")
                        } else if kv.starts_with("MinCount=") {
                            format!("MinCount={k}")
                        } else {
                            kv.to_owned()
                        }
                    })
                    .collect();
                body = rewritten.join("&").into_bytes();
            }
            None => {}
        }
        let Some(answer) = forward(upstream, &head, &body) else { return };
        // The client keeps its connection: moto's `Connection: close` is not for it, unless
        // the answer has no length and ends with the connection.
        let (answer, delimited) = http::keep_alive(answer);
        if out.write_all(&answer).is_err() || !delimited {
            return;
        }
    }
}

/// Sends the request to moto on a connection of its own and returns the whole answer.
fn forward(upstream: &str, head: &RequestHead, body: &[u8]) -> Option<Vec<u8>> {
    let mut up = TcpStream::connect(upstream).ok()?;
    up.write_all(&http::forward_request(&head.method, &head.target, &head.headers, body)).ok()?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).ok()?;
    Some(answer)
}

fn error_response(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>testkit-fault</RequestID></Response>"
    );
    http::response(status, "Injected", &[("Content-Type", "text/xml;charset=UTF-8")], body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads answers off `conn` until `n` have come (each has a Content-Length).
    fn answers(conn: &mut TcpStream, n: usize) -> Vec<String> {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while out.len() < n {
            if let http::ResponseProgress::Complete(end) = http::response_progress(&data) {
                out.push(String::from_utf8_lossy(&data[..end]).into_owned());
                data.drain(..end);
                continue;
            }
            let got = conn.read(&mut buf).unwrap();
            assert!(got > 0, "the proxy closed after {} answers", out.len());
            data.extend_from_slice(&buf[..got]);
        }
        out
    }

    /// Pipelined requests on one kept-alive connection, split across writes, each get their
    /// answer: a fault's or the upstream's (here the fake query API, over loopback).
    #[test]
    fn faults_and_passes_requests_on_one_connection() {
        let upstream = crate::fake_query_api(|body| format!("<Echo>{body}</Echo>"));
        let proxy = FaultProxy::start(&upstream);
        proxy.set_rules(vec![Rule::first("RunInstances", 1, Fault::insufficient_capacity())]);
        let mut conn = TcpStream::connect(proxy.endpoint.trim_start_matches("http://")).unwrap();
        let req = |body: &str| format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let both = req("Action=RunInstances") + &req("Action=DescribeInstances");
        let (a, b) = both.split_at(20);
        conn.write_all(a.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        conn.write_all(b.as_bytes()).unwrap();
        let got = answers(&mut conn, 2);
        assert!(got[0].starts_with("HTTP/1.1 500 Injected") && got[0].contains("InsufficientInstanceCapacity"));
        assert!(got[1].starts_with("HTTP/1.1 200 OK") && got[1].ends_with("<Echo>Action=DescribeInstances</Echo>"));
        assert!(!got[1].to_ascii_lowercase().contains("connection: close"), "{}", got[1]);
        conn.write_all(req("Action=RunInstances").as_bytes()).unwrap();
        assert!(answers(&mut conn, 1)[0].contains("<Echo>Action=RunInstances</Echo>"), "the rule hit once");
        assert_eq!((proxy.count("RunInstances"), proxy.count("DescribeInstances"), proxy.injected()), (2, 1, 1));
        // A request the shared layer refuses ends the connection.
        conn.write_all(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").unwrap();
        assert_eq!(conn.read(&mut [0u8; 16]).unwrap(), 0);
    }
}
