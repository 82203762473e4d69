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
//!
//! The modules: [`guest`] is the guests' door (strict requests, one upstream connection each),
//! [`auth`] checks a guest's signature and evaluates its request against its role's policies,
//! [`workstation`] is the workstation's door and the proxy's own answers there, and [`ec2`]
//! reads EC2 query requests (power changes, console reads) and answers console reads. HTTP
//! itself is `cgcloud_core::http`'s.

mod auth;
mod ec2;
mod guest;
mod workstation;

pub use auth::{authenticate, Denied, Signer};
pub(crate) use ec2::query_params;
pub use ec2::{changes, console_request, power_events};
pub use guest::{parse_guest_request, GuestRequest, Refusal};

use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

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
                Side::Guests => guest::serve(inbound, &door).await,
                Side::Workstation => match TcpStream::connect(("127.0.0.1", door.upstream_port)).await {
                    Ok(outbound) => workstation::relay(inbound, outbound, &door).await,
                    Err(e) => tracing::warn!("proxy: cannot reach moto on port {}: {e}", door.upstream_port),
                },
            }
        });
    }
}

/// Guest connections served at once (all guests together), so that guests cannot make the
/// controller hold unbounded memory; more wait to be accepted.
const GUEST_CONNECTIONS: usize = 512;

/// Tells the controller what a request `body` that moto carried out changes: power events
/// first, then that something changed. A controller that has stopped listening is shutting
/// down; the request stands regardless.
fn notify(events: &mpsc::UnboundedSender<Event>, body: &[u8]) {
    let mut news: Vec<Event> = power_events(body).into_iter().map(Event::Power).collect();
    if changes(body) {
        news.push(Event::Changed);
    }
    for event in news {
        if let Err(e) = events.send(event) {
            tracing::warn!("proxy: the controller did not take {:?}", e.0);
        }
    }
}

#[cfg(test)]
mod test_support {
    use super::*;
    use cgcloud_core::http::{self, ResponseProgress};
    use tokio::io::AsyncReadExt as _;

    /// A door whose moto is on `upstream_port` and whose administrator's client is never used
    /// (it points at the discard port).
    pub(super) async fn door(side: Side, upstream_port: u16, events: mpsc::UnboundedSender<Event>) -> Door {
        Door {
            side,
            upstream_port,
            events,
            dir: std::env::temp_dir(),
            imds: Default::default(),
            cloud: crate::test_cloud().await,
            policies: Default::default(),
        }
    }

    /// Serves `door` on a loopback port and returns the port's address.
    pub(super) async fn serve_on_loopback(door: Door) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, door));
        addr
    }

    /// The next answer (interim ones too) on `conn`; `data` holds what was read past it.
    pub(super) async fn next_answer(conn: &mut TcpStream, data: &mut Vec<u8>) -> String {
        loop {
            if let ResponseProgress::Complete(end) | ResponseProgress::Continue(end) = http::response_progress(data) {
                let answer = String::from_utf8_lossy(&data[..end]).into_owned();
                data.drain(..end);
                return answer;
            }
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed the connection");
            data.extend_from_slice(&buf[..n]);
        }
    }
}
