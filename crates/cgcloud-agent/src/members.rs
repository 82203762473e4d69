//! The member list between a cluster's leader and its workers (`cgcloud_core::members` holds
//! the list's form and checks). The leader's agent serves it, `GET /v1/members` on TCP
//! [`PORT`] of its private address ([`serve`]), read from EC2 with one paginated
//! DescribeInstances at most every [`ON_DEMAND_SECS`] when a node asks for a list it is not in
//! or asks for a fresh one (a refresh after the workstation announced new members), and every
//! [`FRESH_SECS`] otherwise, and only while nodes ask. A worker fetches it
//! ([`from_leader`]) instead of asking EC2 for every member: its boot costs EC2 one
//! DescribeInstances of itself whatever the cluster's size, and its answer from the leader is
//! ~150 bytes a member instead of ~4.7 KB (docs/scale.md).
//!
//! The list is MAC'd with the cluster's key, which every node has from its user data; what the
//! leader (or anyone on the network) sends is checked before use, and a worker that gets no
//! good list in time goes back to asking EC2 (logged).

use crate::aws::{AwsError, Client};
use crate::cluster::Node;
use crate::log::log;
use cgcloud_core::members::{Member, MemberList, MembersError, View, MAX_BYTES};
pub use cgcloud_core::members::{KEY_LEN, KEY_PATH, PORT};
use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A list the leader serves is at most this old: new members appear within it.
pub const FRESH_SECS: u64 = 20;
/// A node that is not in the list makes the leader read EC2 again, at most this often (1000
/// booting workers cost EC2 one query every few seconds, not 1000).
pub const ON_DEMAND_SECS: u64 = 3;
/// The oldest list a worker accepts: the leader's lists are at most [`FRESH_SECS`] old, and
/// clocks may differ a little. An older one is a replay.
pub const MAX_AGE_SECS: u64 = 120;
/// Connections the leader handles at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// The longest request head the leader reads.
const MAX_HEAD: usize = 4096;
/// How long a worker keeps asking a leader whose host refuses connections: one whose agent
/// serves the list does so within seconds of its network coming up, and one from an image baked
/// before there was a list never will (its workers should not wait the whole `Leader::wait`).
const CLOSED_SECS: u64 = 45;
/// Where a worker's first boot records its leader's address, for the daemon's refreshes.
pub const LEADER_FILE: &str = "/var/lib/cgcloud/members-leader";

/// Why a worker did not use the leader's list.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch the member list from {url}: {detail}")]
    Transport { url: String, detail: String },
    /// The leader's host is up, and nothing listens (its agent predates the list, or has not
    /// started serving yet).
    #[error("the leader at {url} refuses connections")]
    Closed { url: String },
    #[error("the member list from {url} was refused")]
    Refused {
        url: String,
        #[source]
        source: MembersError,
    },
    #[error("the member list from {url} does not list this node ({id})")]
    NotListed { url: String, id: String },
    #[error("the cluster key {path} is unusable: {detail}")]
    Key { path: String, detail: String },
}

/// Where a worker gets the member list: its leader, and the key the list must be MAC'd with.
pub struct Leader {
    pub addr: SocketAddr,
    pub key: Vec<u8>,
    /// How long a worker keeps asking before it asks EC2 instead.
    pub wait: Duration,
    /// The newest list accepted so far (unix s): an older one is refused even if it is
    /// younger than [`MAX_AGE_SECS`] (a replay during the daemon's refreshes).
    pub newest: std::cell::Cell<u64>,
    /// Ask for a list read from EC2 at most [`ON_DEMAND_SECS`] ago: the daemon's refreshes,
    /// which the workstation's "members changed" notifications trigger, want the members of
    /// now, not of the leader's last read (first boot needs only to be listed).
    pub fresh: bool,
}

impl Leader {
    /// The leader at `ip` (the launch's `CGCLOUD_BOOT_LEADER`) with the key in `key_path`.
    pub fn new(
        ip: std::net::Ipv4Addr,
        key_path: &std::path::Path,
        wait: Duration,
        fresh: bool,
    ) -> Result<Leader, FetchError> {
        Ok(Leader { addr: SocketAddr::from((ip, PORT)), key: read_key(key_path)?, wait, newest: 0.into(), fresh })
    }
}

/// The cluster key: exactly [`KEY_LEN`] bytes.
pub fn read_key(path: &std::path::Path) -> Result<Vec<u8>, FetchError> {
    let bad = |detail: String| FetchError::Key { path: path.display().to_string(), detail };
    let key = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if key.len() != KEY_LEN {
        return Err(bad(format!("{} bytes, not {KEY_LEN}", key.len())));
    }
    Ok(key)
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The list of `nodes` as the leader publishes it. A node with a malformed field (its tags and
/// addresses come from EC2, but a host key is whatever its node wrote) is left out, or loses
/// its host key, rather than spoiling the whole list: the workers refuse a list with one bad
/// member.
pub fn member_list(cluster: &str, nodes: &[Node], generated_at: u64) -> MemberList {
    let mut members = Vec::new();
    for n in nodes {
        let mut m = Member {
            id: n.id.clone(),
            ordinal: n.ordinal(),
            private_ip: n.private_ip.clone(),
            private_dns: n.private_dns.clone(),
            zone: n.zone.clone(),
            host_key: n.tags.get(cgcloud_core::tags::HOST_KEY).cloned().unwrap_or_default(),
        };
        if !m.host_key.is_empty() && !cgcloud_core::members::valid_host_key(&m.host_key) {
            m.host_key.clear();
        }
        match m.check() {
            Ok(()) if members.len() < cgcloud_core::members::MAX_MEMBERS => members.push(m),
            Ok(()) => log("warning", format!("members: more than {} members; {} left out", members.len(), n.id)),
            // An instance that has no address yet appears in a later list.
            Err(why) => log("info", format!("members: {} left out of the list: {why}", n.id)),
        }
    }
    MemberList::new(cluster, generated_at, members)
}

/// The list's members as the nodes the rest of `cluster.rs` works with: the tags they need
/// (ordinal, host key, cluster, namespace) from the list's fields.
pub fn nodes_of(list: &MemberList, namespace: &str) -> Vec<Node> {
    use cgcloud_core::tags;
    list.members
        .iter()
        .map(|m| {
            let mut t = std::collections::BTreeMap::new();
            t.insert(tags::NAMESPACE.to_owned(), namespace.to_owned());
            t.insert(tags::CLUSTER.to_owned(), list.cluster.clone());
            if let Some(o) = m.ordinal {
                t.insert(tags::ORDINAL.to_owned(), o.to_string());
            }
            if !m.host_key.is_empty() {
                t.insert(tags::HOST_KEY.to_owned(), m.host_key.clone());
            }
            Node {
                id: m.id.clone(),
                private_ip: m.private_ip.clone(),
                private_dns: list.private_dns(m),
                zone: list.zone(m),
                tags: t,
                state: "running".into(),
                ..Default::default()
            }
        })
        .collect()
}

/// What the leader serves: the list, signed, and when it was read from EC2.
struct Cached {
    list: MemberList,
    bytes: Arc<Vec<u8>>,
    ids: BTreeSet<String>,
    at: Option<Instant>,
}

/// The leader's side: its cluster, key, and a client for EC2.
pub struct Publisher {
    aws: Mutex<Client>,
    namespace: String,
    cluster: String,
    key: Vec<u8>,
    cached: Mutex<Cached>,
    /// DescribeInstances pages read so far (for tests and `bench members`).
    pub reads: AtomicUsize,
    /// Whether each read also rewrites this node's /etc/hosts and known_hosts (the leader's
    /// daemon: between its own refreshes, every 5 minutes, the workers its scaler launched
    /// appear there as soon as they ask for the list, host keys and all).
    pub write_own: bool,
}

impl Publisher {
    pub fn new(aws: Client, namespace: &str, cluster: &str, key: Vec<u8>) -> Publisher {
        Publisher {
            aws: Mutex::new(aws),
            namespace: namespace.to_owned(),
            cluster: cluster.to_owned(),
            key,
            cached: Mutex::new(Cached {
                list: MemberList::new(cluster, 0, Vec::new()),
                bytes: Arc::new(Vec::new()),
                ids: BTreeSet::new(),
                at: None,
            }),
            reads: AtomicUsize::new(0),
            write_own: false,
        }
    }

    /// The signed list for a node (`asking`, if it said which): read from EC2 again if it is
    /// older than [`FRESH_SECS`], or than [`ON_DEMAND_SECS`] and the node is not in it or asks
    /// for a `fresh` one. Nodes asking at once wait for one read (the lock), not one each.
    pub fn list(&self, asking: Option<&str>, fresh: bool) -> Result<Arc<Vec<u8>>, AwsError> {
        self.view(asking, fresh, View::All)
    }

    /// [`Publisher::list`] as `view` shows it to `asking`: the leader's view is signed for
    /// each node that asks (a MAC over ~500 bytes), the whole list once per read.
    pub fn view(&self, asking: Option<&str>, fresh: bool, view: View) -> Result<Arc<Vec<u8>>, AwsError> {
        let sign = |list: &MemberList| {
            list.sign(&self.key).map_err(|e| AwsError::Parse {
                action: "members".into(),
                detail: format!("cannot sign the member list: {e}"),
            })
        };
        let mut c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        let age = c.at.map(|at| at.elapsed());
        let stale = age.is_none_or(|a| a > Duration::from_secs(FRESH_SECS))
            || ((fresh || asking.is_some_and(|id| !c.ids.contains(id)))
                && age.is_some_and(|a| a > Duration::from_secs(ON_DEMAND_SECS)));
        if stale {
            let aws = self.aws.lock().unwrap_or_else(|p| p.into_inner());
            let nodes = crate::cluster::members(&aws, &self.namespace, &self.cluster)?;
            self.reads.fetch_add(1, Ordering::Relaxed);
            if self.write_own {
                match crate::cluster::write_membership(&self.cluster, &nodes, View::All) {
                    Ok(true) => log("info", format!("cluster {}: {} member(s)", self.cluster, nodes.len())),
                    Ok(false) => {}
                    Err(e) => log("error", format!("cannot write the members of cluster {}: {e}", self.cluster)),
                }
            }
            let list = member_list(&self.cluster, &nodes, unix_now());
            let bytes = sign(&list)?;
            let ids = list.members.iter().map(|m| m.id.clone()).collect();
            *c = Cached { list, bytes: Arc::new(bytes), ids, at: Some(Instant::now()) };
        }
        match view {
            View::All => Ok(c.bytes.clone()),
            View::Leader => Ok(Arc::new(sign(&c.list.view_for(view, asking))?)),
        }
    }

    /// Whether `id` was in the last list read (the leader finds its own address this way).
    pub fn own_address(&self, id: &str) -> Result<Option<std::net::Ipv4Addr>, AwsError> {
        let bytes = self.list(Some(id), false)?;
        let list = MemberList::verify(&bytes, &self.key, &self.cluster, 0, unix_now())
            .map_err(|e| AwsError::Parse { action: "members".into(), detail: e.to_string() })?;
        Ok(list.members.iter().find(|m| m.id == id).and_then(|m| m.private_ip.parse().ok()))
    }
}

/// Answers `GET /v1/members[?for=ID]` on `listener` with the publisher's list, in threads of
/// their own. Returns at once.
pub fn serve(listener: TcpListener, publisher: Arc<Publisher>) {
    crate::conns::serve_each(
        move || listener.accept().map(|(s, _)| s),
        MAX_CONNECTIONS,
        move |stream| answer(stream, &publisher),
    );
}

/// What a node asks the leader for: hints for when to read EC2 again.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    /// The node asking (`?for=ID`), if its id has an instance id's shape.
    asking: Option<String>,
    /// `&fresh=1`: the members of now (see [`Leader::fresh`]).
    fresh: bool,
    /// `&view=leader`: the leader and the node that asks (see [`View`]).
    view: View,
}

fn parse_request(head: &str) -> Result<Request, &'static str> {
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split(' ');
    let (Some("GET"), Some(target), Some(version)) = (words.next(), words.next(), words.next()) else {
        return Err("405 Method Not Allowed");
    };
    if !version.starts_with("HTTP/1.") {
        return Err("400 Bad Request");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/v1/members" {
        return Err("404 Not Found");
    }
    let asking = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("for="))
        .filter(|id| cgcloud_core::members::valid_instance_id(id))
        .map(str::to_owned);
    let view = match query.split('&').find_map(|kv| kv.strip_prefix("view=")) {
        Some(v) => View::parse(v).ok_or("400 Bad Request")?,
        None => View::All,
    };
    Ok(Request { asking, fresh: query.split('&').any(|kv| kv == "fresh=1"), view })
}

fn answer(mut stream: TcpStream, publisher: &Publisher) {
    // A peer that sends nothing, or reads nothing, must not hold a thread for ever; failing to
    // set a timeout only risks that.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(20)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let reply = |status: &str, body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    };
    let out = match parse_request(&String::from_utf8_lossy(&head)) {
        Ok(r) => match publisher.view(r.asking.as_deref(), r.fresh, r.view) {
            Ok(bytes) => reply("200 OK", &bytes),
            Err(e) => {
                log("warning", format!("members: cannot read the members from EC2: {e}"));
                reply("503 Service Unavailable", b"")
            }
        },
        Err(status) => reply(status, b""),
    };
    // The peer may have gone; there is no one else to tell.
    let _ = stream.write_all(&out);
}

/// One fetch of the list from `addr`, for node `me`, as `view` shows it: the bytes as they
/// came (at most `MAX_BYTES` + 1, so that larger input is refused, not read whole).
pub fn fetch(http: &ureq::Agent, addr: SocketAddr, me: &str, fresh: bool, view: View) -> Result<Vec<u8>, FetchError> {
    let mut url = format!("http://{addr}/v1/members?for={me}{}", if fresh { "&fresh=1" } else { "" });
    if !view.is_all() {
        url.push_str(&format!("&view={}", view.as_str()));
    }
    let transport = |detail: String| FetchError::Transport { url: url.clone(), detail };
    let resp = http.get(&url).call().map_err(|e| {
        let refused = match &e {
            ureq::Error::Transport(t) => std::error::Error::source(t)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused),
            ureq::Error::Status(..) => false,
        };
        if refused {
            FetchError::Closed { url: url.clone() }
        } else {
            transport(e.to_string())
        }
    })?;
    let mut bytes = Vec::new();
    resp.into_reader().take(MAX_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(|e| transport(e.to_string()))?;
    Ok(bytes)
}

/// The members as `leader` lists them, with this node (`me`, as EC2 describes it: its own tags
/// stay the truth about itself) among them. Asks again, with jittered waits, while the leader
/// cannot be reached or does not list this node yet (it reads EC2 again when asked), for up to
/// `leader.wait`; a list that fails its checks ends the wait at once. A worker of an elastic
/// cluster asks for the leader's view ([`crate::cluster::view_of`]).
pub fn from_leader(leader: &Leader, namespace: &str, cluster: &str, me: &Node) -> Result<Vec<Node>, FetchError> {
    let view = crate::cluster::view_of(&me.tags);
    let http =
        ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(3)).timeout(Duration::from_secs(20)).build();
    let deadline = Instant::now() + leader.wait;
    let mut wait = Duration::from_millis(500);
    let mut closed_since: Option<Instant> = None;
    loop {
        let url = format!("http://{}/v1/members", leader.addr);
        let got = fetch(&http, leader.addr, &me.id, leader.fresh, view).and_then(|bytes| {
            let now = unix_now();
            let floor = now.saturating_sub(MAX_AGE_SECS).max(leader.newest.get());
            let list = MemberList::verify(&bytes, &leader.key, cluster, floor, now)
                .map_err(|source| FetchError::Refused { url: url.clone(), source })?;
            if !list.members.iter().any(|m| m.id == me.id) {
                return Err(FetchError::NotListed { url: url.clone(), id: me.id.clone() });
            }
            leader.newest.set(list.generated_at);
            Ok(list)
        });
        match got {
            Ok(list) => {
                // A leader from before views answers with every member.
                let list = if view.is_all() { list } else { list.view_for(view, Some(&me.id)) };
                let mut nodes = nodes_of(&list, namespace);
                // EC2's description of this node, where the caller has one (first boot; a
                // refresh knows only its id and tags, and takes the list's entry).
                for n in nodes.iter_mut().filter(|n| n.id == me.id && !me.private_ip.is_empty()) {
                    *n = me.clone();
                }
                return Ok(nodes);
            }
            Err(e @ (FetchError::Refused { .. } | FetchError::Key { .. })) => return Err(e),
            Err(e @ FetchError::Closed { .. })
                if closed_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(CLOSED_SECS) =>
            {
                return Err(e)
            }
            Err(e) if Instant::now() + wait < deadline => {
                if !matches!(e, FetchError::Closed { .. }) {
                    closed_since = None;
                }
                log("info", format!("{e}; asking again"));
                std::thread::sleep(crate::cluster::jittered(wait));
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The leader's side of the daemon: once it knows it leads a cluster with a key, it serves the
/// list on its private address. Started once; a failure is logged and tried again at the next
/// refresh.
pub fn start_publishing(
    aws: Client,
    namespace: &str,
    cluster: &str,
    instance_id: &str,
) -> Result<Arc<Publisher>, String> {
    let key = read_key(std::path::Path::new(KEY_PATH)).map_err(|e| e.to_string())?;
    let publisher = Arc::new(Publisher { write_own: true, ..Publisher::new(aws, namespace, cluster, key) });
    // Its private address, as EC2 lists it among the members: the list is for the cluster's
    // network, not every interface (a container bridge, say).
    let ip = publisher
        .own_address(instance_id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{instance_id} is not among the members of cluster {cluster}"))?;
    let listener = TcpListener::bind((ip, PORT)).map_err(|e| format!("cannot listen on {ip}:{PORT}: {e}"))?;
    serve(listener, publisher.clone());
    log("info", format!("members: serving cluster {cluster}'s member list on {ip}:{PORT}"));
    Ok(publisher)
}

#[cfg(test)]
mod tests;
