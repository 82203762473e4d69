//! Cluster nodes configure themselves. At first boot (`cgcloud-agent boot`, run by cloud-init)
//! a node reads its own tags from EC2 and the other members from its leader's list
//! (`members.rs`; from EC2 on the leader itself, on nodes of clusters made before the leader
//! published it, and whenever the leader's list does not come or fails its checks), applies
//! the plan baked into its image with the cluster's facts (so `on = "leader"` / `"workers"`
//! steps run where they belong), writes the members into /etc/hosts, and tags itself
//! configured ([`first_boot`]).
//! Afterwards the agent daemon keeps /etc/hosts current as nodes come and go
//! ([`refresh_membership`]).

use crate::aws::{AwsError, Client, Service};
use crate::log::log;
use crate::members::Leader;
use crate::safefs::SafeError;
use crate::volume::VolumeError;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why first boot failed, or a tag was refused. Each says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("tag {key} is not a cluster name: {value:?}")]
    NotClusterName { key: &'static str, value: String },
    #[error("tag {key} is not a plain name: {value:?}")]
    NotPlainName { key: &'static str, value: String },
    #[error("this node has no ordinal (no cgcloud:ordinal tag, and no place in a launch's cgcloud:ordinals): it is neither the leader nor a worker")]
    NoOrdinal,
    #[error(transparent)]
    Write(#[from] SafeError),
    #[error("persistent volume: {0}")]
    Volume(VolumeError),
    #[error("IMDS is open to every user of this node: {g} is not active (systemctl status {g})", g = IMDS_GUARD)]
    ImdsOpen,
    #[error("{path}: {error}")]
    Plan { path: String, error: serde_json::Error },
    #[error("{0}")]
    Facts(String),
    /// What the plan's failed step said.
    #[error("{0} (see {log})", log = APPLY_LOG)]
    Apply(String),
}

pub const HOSTS_BEGIN: &str = "# BEGIN cgcloud cluster";
pub const HOSTS_END: &str = "# END cgcloud cluster";

/// One instance as DescribeInstances describes it.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub id: String,
    pub private_ip: String,
    pub private_dns: String,
    pub zone: String,
    pub launch_index: Option<i32>,
    pub tags: BTreeMap<String, String>,
    /// The account that owns the instance (its reservation's `ownerId`).
    pub account: String,
    /// `spot` for a spot instance, else empty (EC2's `instanceLifecycle`).
    pub lifecycle: String,
    /// `pending`, `running`, `shutting-down`, …
    pub state: String,
    /// Why it changed state last, e.g. `Server.SpotInstanceTermination` (EC2's `stateReason`).
    pub state_reason: String,
}

impl Node {
    pub fn ordinal(&self) -> Option<u32> {
        cgcloud_core::tags::ordinal(&self.tags, self.launch_index)
    }
    /// The instance's ARN, as IAM names the caller of a request signed with its credentials.
    pub fn arn(&self, region: &str) -> String {
        cgcloud_core::policy::instance_arn(region, &self.account, &self.id)
    }
    pub fn hostname(&self) -> String {
        self.private_dns.split('.').next().unwrap_or_default().to_owned()
    }
}

/// The instances of a DescribeInstances (or RunInstances) answer.
pub fn parse_nodes(xml: &str) -> Vec<Node> {
    use crate::aws::child_text;
    let sub = |n: roxmltree::Node, outer: &str, inner: &str| {
        n.children().find(|c| c.tag_name().name() == outer).map(|o| child_text(o, inner)).unwrap_or_default()
    };
    let Ok(doc) = roxmltree::Document::parse(xml) else { return Vec::new() };
    doc.descendants()
        .filter(|n| n.tag_name().name() == "item" && n.children().any(|c| c.tag_name().name() == "instanceId"))
        .map(|n| {
            let tags = n
                .children()
                .find(|c| c.tag_name().name() == "tagSet")
                .map(|ts| {
                    ts.children()
                        .filter(|c| c.tag_name().name() == "item")
                        .map(|i| (child_text(i, "key"), child_text(i, "value")))
                        .collect()
                })
                .unwrap_or_default();
            let zone = n
                .children()
                .find(|c| c.tag_name().name() == "placement")
                .map(|p| child_text(p, "availabilityZone"))
                .unwrap_or_default();
            Node {
                id: child_text(n, "instanceId"),
                private_ip: child_text(n, "privateIpAddress"),
                private_dns: child_text(n, "privateDnsName"),
                zone,
                launch_index: child_text(n, "amiLaunchIndex").parse().ok(),
                lifecycle: child_text(n, "instanceLifecycle"),
                state: sub(n, "instanceState", "name"),
                state_reason: sub(n, "stateReason", "code"),
                tags,
                account: n
                    .ancestors()
                    .find(|a| a.children().any(|c| c.tag_name().name() == "ownerId"))
                    .map(|r| child_text(r, "ownerId"))
                    .unwrap_or_default(),
            }
        })
        .collect()
}

pub fn describe_self(aws: &Client, id: &str) -> Result<Node, AwsError> {
    let a = aws.call(Service::Ec2, "DescribeInstances", &[("InstanceId.1", id.to_owned())])?;
    parse_nodes(&a.0)
        .into_iter()
        .find(|n| n.id == id)
        .ok_or_else(|| AwsError::Parse { action: "DescribeInstances".into(), detail: format!("{id} not found") })
}

/// Every instance matching `filters` (name, values), all pages of DescribeInstances.
pub fn describe_filtered(aws: &Client, filters: &[(&str, &[&str])]) -> Result<Vec<Node>, AwsError> {
    let mut base: Vec<(String, String)> = Vec::new();
    for (i, (name, values)) in filters.iter().enumerate() {
        base.push((format!("Filter.{}.Name", i + 1), (*name).to_owned()));
        for (j, v) in values.iter().enumerate() {
            base.push((format!("Filter.{}.Value.{}", i + 1, j + 1), (*v).to_owned()));
        }
    }
    let mut nodes = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params: Vec<(&str, String)> = base.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        if let Some(t) = &token {
            params.push(("NextToken", t.clone()));
        }
        let a = aws.call(Service::Ec2, "DescribeInstances", &params)?;
        nodes.extend(parse_nodes(&a.0));
        token = a.text("nextToken").filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(nodes);
        }
    }
}

/// The live members of a cluster, leader first, then by ordinal.
pub fn members(aws: &Client, namespace: &str, cluster: &str) -> Result<Vec<Node>, AwsError> {
    let mut nodes = describe_filtered(
        aws,
        &[
            ("tag:cgcloud:namespace", &[namespace]),
            ("tag:cgcloud:cluster", &[cluster]),
            ("instance-state-name", &["pending", "running"]),
        ],
    )?;
    nodes.retain(|n| n.tags.get(cgcloud_core::tags::NAMESPACE).map(String::as_str) == Some(namespace));
    nodes.sort_by_key(|n| (n.ordinal().unwrap_or(u32::MAX), n.id.clone()));
    Ok(nodes)
}

/// The /etc/hosts lines for the members: address, DNS names, and `cluster-leader` /
/// `cluster-node-<ordinal>` aliases.
pub fn hosts_block(cluster: &str, nodes: &[Node]) -> String {
    let mut out = format!("{HOSTS_BEGIN} {cluster}\n");
    for n in nodes {
        if n.private_ip.is_empty() {
            continue;
        }
        out.push_str(&format!("{} {}\n", n.private_ip, names(n).join(" ")));
    }
    out.push_str(HOSTS_END);
    out.push('\n');
    out
}

/// `hosts` with our block replaced by `block`.
pub fn replace_block(hosts: &str, block: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in hosts.lines() {
        if line.starts_with(HOSTS_BEGIN) {
            inside = true;
            continue;
        }
        if line.starts_with(HOSTS_END) {
            inside = false;
            continue;
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(block);
    out
}

/// A member's names: its DNS name, its host name, and `cluster-leader` / `cluster-node-<ordinal>`.
fn names(n: &Node) -> Vec<String> {
    let mut names = vec![n.private_dns.clone(), n.hostname()];
    if let Some(o) = n.ordinal() {
        if o == 0 {
            names.push("cluster-leader".into());
        }
        names.push(format!("cluster-node-{o}"));
    }
    names.retain(|s| !s.is_empty());
    names
}

/// The system-wide known_hosts lines for the members that have published their host key: so
/// that SSH inside the cluster (e.g. a worker mounting the leader's shared directory) verifies
/// host keys. A host key tag is written by its node alone (the instance profile allows no
/// other), and is checked here to be one ed25519 key in plain base64; names come from EC2.
pub fn known_hosts_block(cluster: &str, nodes: &[Node]) -> String {
    let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
    let mut out = format!("{HOSTS_BEGIN} {cluster}\n");
    for n in nodes {
        let Some(key) = n.tags.get(cgcloud_core::tags::HOST_KEY) else { continue };
        let blob = key.strip_prefix("ssh-ed25519 ").unwrap_or_default();
        if blob.len() < 60 || blob.len() > 120 || !blob.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
        {
            continue;
        }
        let mut all = vec![n.private_ip.clone()];
        all.extend(names(n));
        all.retain(|s| !s.is_empty() && plain(s));
        if !all.is_empty() {
            out.push_str(&format!("{} ssh-ed25519 {blob}\n", all.join(",")));
        }
    }
    out.push_str(HOSTS_END);
    out.push('\n');
    out
}

/// Rewrites /etc/hosts, /etc/ssh/ssh_known_hosts (our blocks, atomically) and
/// /etc/cgcloud/cluster.json when membership or a member's host key changed. `view` is what
/// `nodes` are: every member, or the leader and this node (cluster.json says which).
pub fn write_membership(cluster: &str, nodes: &[Node], view: cgcloud_core::members::View) -> Result<bool, SafeError> {
    // The leader's daemon and its member-list server both write here: one at a time, so that
    // each write is whole (the files are replaced atomically; this keeps the three together).
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let known = std::fs::read_to_string("/etc/ssh/ssh_known_hosts").unwrap_or_default();
    let new_known = replace_block(&known, &known_hosts_block(cluster, nodes));
    if new_known != known {
        crate::safefs::write_atomic(
            std::path::Path::new("/etc/ssh/ssh_known_hosts"),
            new_known.as_bytes(),
            crate::safefs::Attrs::root(0o644),
        )?;
    }
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let new = replace_block(&hosts, &hosts_block(cluster, nodes));
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "cluster": cluster,
        "view": view,
        "members": nodes.iter().map(|n| serde_json::json!({
            "instance_id": n.id, "private_ip": n.private_ip, "hostname": n.hostname(), "ordinal": n.ordinal(),
        })).collect::<Vec<_>>(),
    }))
    .unwrap_or_default();
    let old_json = std::fs::read_to_string("/etc/cgcloud/cluster.json").unwrap_or_default();
    if new == hosts && json == old_json {
        return Ok(false);
    }
    for (path, content) in [("/etc/hosts", new), ("/etc/cgcloud/cluster.json", json)] {
        crate::safefs::write_atomic(Path::new(path), content.as_bytes(), crate::safefs::Attrs::root(0o644))?;
    }
    Ok(true)
}

/// Which members a node with `tags` keeps in /etc/hosts and known_hosts, and asks its leader
/// for: a worker of an elastic cluster (one with a scheduler's node prefix) the leader and
/// itself, so that its boot and refreshes cost O(1) whatever the cluster's size; every other
/// node every member.
pub fn view_of(tags: &BTreeMap<String, String>) -> cgcloud_core::members::View {
    use cgcloud_core::members::View;
    let ordinal = cgcloud_core::tags::ordinal(tags, None);
    if tags.contains_key(cgcloud_core::tags::NODE_PREFIX) && ordinal != Some(0) {
        View::Leader
    } else {
        View::All
    }
}

/// The leader of `cluster` and this node (`me`, as EC2 describes it, or by id and tags alone)
/// from EC2: what an elastic cluster's worker asks EC2 for when its leader's list does not
/// come (two small requests, not every member's description).
fn leader_and_self(aws: &Client, namespace: &str, cluster: &str, me: &Node) -> Result<Vec<Node>, AwsError> {
    let mut nodes = describe_filtered(
        aws,
        &[
            ("tag:cgcloud:namespace", &[namespace]),
            ("tag:cgcloud:cluster", &[cluster]),
            ("tag:cgcloud:ordinal", &["0"]),
            ("instance-state-name", &["pending", "running"]),
        ],
    )?;
    nodes.retain(|n| {
        n.tags.get(cgcloud_core::tags::NAMESPACE).map(String::as_str) == Some(namespace) && n.ordinal() == Some(0)
    });
    nodes.truncate(1);
    nodes.push(if me.private_ip.is_empty() { describe_self(aws, &me.id)? } else { me.clone() });
    Ok(nodes)
}

/// The members in `me`'s view ([`view_of`]), from EC2.
fn members_in_view(aws: &Client, namespace: &str, cluster: &str, me: &Node) -> Result<Vec<Node>, AwsError> {
    match view_of(&me.tags) {
        cgcloud_core::members::View::Leader => leader_and_self(aws, namespace, cluster, me),
        cgcloud_core::members::View::All => members(aws, namespace, cluster),
    }
}

/// Checks the tag values `facts` passes on: the cluster name as `create-cluster` accepts it,
/// role and cluster type as plain words.
pub fn check_tag_facts(me: &Node) -> Result<(), BootError> {
    use cgcloud_core::tags;
    let word =
        |s: &str| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    let get = |k: &str| me.tags.get(k).map(String::as_str).unwrap_or_default();
    if !tags::valid_cluster_name(get(tags::CLUSTER)) {
        return Err(BootError::NotClusterName { key: tags::CLUSTER, value: get(tags::CLUSTER).to_owned() });
    }
    for key in [tags::ROLE, tags::CLUSTER_TYPE] {
        if me.tags.contains_key(key) && !word(get(key)) {
            return Err(BootError::NotPlainName { key, value: get(key).to_owned() });
        }
    }
    // Without one it would take itself for the leader (ordinal 0) and run the leader's steps.
    if me.ordinal().is_none() {
        return Err(BootError::NoOrdinal);
    }
    if me.tags.contains_key(tags::NODE_PREFIX) && !valid_node_prefix(get(tags::NODE_PREFIX)) {
        return Err(BootError::NotPlainName { key: tags::NODE_PREFIX, value: get(tags::NODE_PREFIX).to_owned() });
    }
    Ok(())
}

/// A node prefix as roles declare it: 1 to 8 lower-case letters (it becomes a host name).
pub fn valid_node_prefix(p: &str) -> bool {
    (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_lowercase())
}

/// The facts of a cluster node for its plan's templates.
pub fn facts(me: &Node, nodes: &[Node], region: &str, namespace: &str) -> serde_json::Value {
    let t = |k: &str| me.tags.get(k).cloned().unwrap_or_default();
    let ordinal = me.ordinal().unwrap_or(0);
    let leader = nodes.iter().find(|n| n.ordinal() == Some(0));
    // An elastic cluster's worker knows its leader and itself alone: no list of workers, and
    // no size, rather than wrong ones.
    let all = view_of(&me.tags).is_all();
    let workers: Vec<&Node> = nodes.iter().filter(|n| all && n.ordinal().is_some_and(|o| o > 0)).collect();
    serde_json::json!({
        "box": {
            "instance_id": me.id, "private_ip": me.private_ip, "private_dns": me.private_dns,
            "hostname": me.hostname(), "zone": me.zone, "region": region, "namespace": namespace,
            "market": if me.lifecycle == "spot" { "spot" } else { "on-demand" },
            "role": t(cgcloud_core::tags::ROLE),
        },
        "cluster": {
            "role": if ordinal == 0 { "leader" } else { "worker" },
            "name": t(cgcloud_core::tags::CLUSTER),
            "type": t(cgcloud_core::tags::CLUSTER_TYPE),
            "ordinal": ordinal.to_string(),
            "leader_id": leader.map(|l| l.id.clone()).unwrap_or_default(),
            "leader_ip": leader.map(|l| l.private_ip.clone()).unwrap_or_default(),
            "leader_hostname": leader.map(|l| l.hostname()).unwrap_or_default(),
            "worker_ips": workers.iter().map(|w| w.private_ip.clone()).collect::<Vec<_>>(),
            "worker_hostnames": workers.iter().map(|w| w.hostname()).collect::<Vec<_>>(),
            "size": if all { nodes.len().to_string() } else { String::new() },
            // An elastic cluster's workers are the scheduler's nodes `<prefix><ordinal>`.
            "elastic": if me.tags.contains_key(cgcloud_core::tags::NODE_PREFIX) { "true" } else { "false" },
            "node_name": match me.tags.get(cgcloud_core::tags::NODE_PREFIX) {
                Some(prefix) if ordinal > 0 => format!("{prefix}{ordinal}"),
                _ => String::new(),
            },
        },
    })
}

/// Brings /etc/hosts and known_hosts up to date with the members of the cluster the box's
/// `tags` name (nothing if they name none, or no valid cluster). A worker with a `leader`
/// takes the leader's list (and EC2's if that fails). A file that cannot be written is logged;
/// only API errors fail the refresh.
pub fn refresh_membership(
    aws: &Client,
    namespace: &str,
    instance_id: &str,
    tags: &BTreeMap<String, String>,
    leader: Option<&Leader>,
) -> Result<(), AwsError> {
    let Some(cluster) = tags.get(cgcloud_core::tags::CLUSTER) else { return Ok(()) };
    if !cgcloud_core::tags::valid_cluster_name(cluster) {
        log("error", format!("ignoring cluster tag {cluster:?}: not a cluster name"));
        return Ok(());
    }
    // Its own entry needs no more than its id and tags here: /etc/hosts and known_hosts are
    // written from the list's fields, as from EC2's for every other member.
    let me = Node { id: instance_id.to_owned(), tags: tags.clone(), ..Default::default() };
    let nodes = match leader.filter(|_| me.ordinal() != Some(0)) {
        Some(l) => members_via(namespace, cluster, &me, l, || members_in_view(aws, namespace, cluster, &me))?,
        None => members_in_view(aws, namespace, cluster, &me)?,
    };
    match write_membership(cluster, &nodes, view_of(&me.tags)) {
        Ok(true) => log("info", format!("cluster {cluster}: {} member(s)", nodes.len())),
        Ok(false) => {}
        Err(e) => log("error", format!("cannot write the members of cluster {cluster}: {e}")),
    }
    Ok(())
}

/// The base role's unit that keeps IMDS for root and the role's `imds_users`.
const IMDS_GUARD: &str = "cgcloud-imds-guard";

/// Where first boot writes the facts it applied the plan with (`cgcloud-agent storage` reads
/// them again at later boots).
const FACTS: &str = "/var/lib/cgcloud/facts.json";
const APPLY_LOG: &str = "/var/log/cgcloud/apply.log";

/// First-boot configuration of a cluster node (run by `cgcloud-agent boot`).
///
/// `cluster` is the cluster the launch says this node belongs to (`CGCLOUD_BOOT_CLUSTER`
/// in its user data): the node then asks for the members only, and finds itself among
/// them, one DescribeInstances instead of two (at 1000 nodes, 1000 fewer requests against
/// EC2's rate limit). Its tags still decide: a node not listed as a member of that cluster
/// asks for itself and goes by what its own tags say.
///
/// `leader` is where a worker fetches the members (`CGCLOUD_BOOT_LEADER`): it then asks EC2
/// only for itself, and gets the members from the leader (see `members.rs`).
pub fn first_boot(
    aws: &Client,
    namespace: &str,
    instance_id: &str,
    plan: &Path,
    cluster: Option<&str>,
    leader: Option<&Leader>,
) -> Result<(), BootError> {
    let Some((me, cluster, nodes)) = find_self(aws, namespace, instance_id, cluster, leader)? else {
        return Ok(());
    };
    if let Some(l) = leader {
        // For the daemon's refreshes (the launch's environment is first boot's alone).
        let ip = l.addr.ip().to_string();
        let at = Path::new(crate::members::LEADER_FILE);
        if let Err(e) = crate::safefs::write_atomic(at, ip.as_bytes(), crate::safefs::Attrs::root(0o644)) {
            log("warning", format!("cannot record the leader's address in {}: {e}", at.display()));
        }
    }
    write_membership(&cluster, &nodes, view_of(&me.tags))?;
    let mut facts = facts(&me, &nodes, &aws.region, namespace);
    // The persistent volume comes before the plan, so that roles can put data on it.
    let volume = persistent_volume(aws, namespace, &cluster, &me);
    let persistent = volume.as_ref().and_then(|r| r.as_ref().ok()).cloned().unwrap_or_default();
    let ephemeral = match crate::storage::prepare() {
        Ok(mp) => mp.unwrap_or_default(),
        Err(e) => {
            log("warning", format!("instance store not usable: {e}"));
            String::new()
        }
    };
    // Where roles keep data: the persistent volume if there is one, else the instance
    // store, else the root disk.
    let data_dir = [&persistent, &ephemeral]
        .into_iter()
        .find(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| "/var/lib/cgcloud/data".to_owned());
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        // The plan's steps that use it will fail and say so; the node may still be usable.
        log("warning", format!("cannot make the data directory {data_dir}: {e}"));
    }
    facts["cluster"]["persistent"] = serde_json::json!(persistent);
    facts["cluster"]["ephemeral"] = serde_json::json!(ephemeral);
    facts["cluster"]["data_dir"] = serde_json::json!(data_dir);
    let facts_text = serde_json::to_string_pretty(&facts).unwrap_or_default();
    crate::safefs::write_atomic(Path::new(FACTS), facts_text.as_bytes(), crate::safefs::Attrs::root(0o644))?;
    let result = match (volume, std::fs::read_to_string(plan)) {
        (Some(Err(e)), _) => Err(BootError::Volume(e)),
        // A node whose IMDS rule did not load would hand its user data (the cluster's
        // secrets) and credentials to every job: it fails instead of joining.
        _ if !imds_guarded() => Err(BootError::ImdsOpen),
        (_, Ok(text)) => apply_boot_plan(plan, &text, &facts_text),
        (_, Err(_)) => Ok(()),
    };
    report(aws, &me, &cluster, &result)?;
    result
}

/// This node, its cluster and the cluster's members; None for a box that is not a cluster
/// node (which only publishes its host key). Tags are only as trustworthy as whoever could
/// write them: checked (`check_tag_facts`) before they reach a query, files or the plan's
/// templates.
pub(crate) fn find_self(
    aws: &Client,
    namespace: &str,
    instance_id: &str,
    named: Option<&str>,
    leader: Option<&Leader>,
) -> Result<Option<(Node, String, Vec<Node>)>, BootError> {
    // With a leader to ask, EC2 is asked for this node alone (below).
    if let Some(c) = named.filter(|c| cgcloud_core::tags::valid_cluster_name(c) && leader.is_none()) {
        let nodes = retry(|| members(aws, namespace, c))?;
        let me = nodes
            .iter()
            .find(|n| n.id == instance_id && n.tags.get(cgcloud_core::tags::CLUSTER).map(String::as_str) == Some(c));
        match me.cloned() {
            Some(me) => {
                log("info", format!("first boot in cluster {c}: {} member(s), this node among them", nodes.len()));
                check_tag_facts(&me)?;
                return Ok(Some((me, c.to_owned(), nodes)));
            }
            None => log("warning", format!("not listed as a member of cluster {c}; going by this node's own tags")),
        }
    }
    let me = retry(|| describe_self(aws, instance_id))?;
    let Some(cluster) = me.tags.get(cgcloud_core::tags::CLUSTER).cloned() else {
        log("info", "not a cluster node; nothing to configure at first boot");
        if !me.tags.contains_key(cgcloud_core::tags::HOST_KEY) {
            retry(|| crate::host_key::publish(aws, instance_id))?;
        }
        return Ok(None);
    };
    check_tag_facts(&me)?;
    // The leader's list only for the cluster the launch named, and never on the leader.
    let via = leader.filter(|_| named == Some(cluster.as_str()) && me.ordinal() != Some(0));
    let from_ec2 = || retry(|| members_in_view(aws, namespace, &cluster, &me));
    let nodes = match via {
        Some(l) => members_via(namespace, &cluster, &me, l, from_ec2)?,
        None => from_ec2()?,
    };
    Ok(Some((me, cluster, nodes)))
}

/// The members from `leader`'s list, or from EC2 (`from_ec2`, logged) if it does not come in
/// time or is refused.
pub(crate) fn members_via(
    namespace: &str,
    cluster: &str,
    me: &Node,
    leader: &Leader,
    from_ec2: impl FnOnce() -> Result<Vec<Node>, AwsError>,
) -> Result<Vec<Node>, AwsError> {
    match crate::members::from_leader(leader, namespace, cluster, me) {
        Ok(nodes) => {
            log(
                "info",
                format!("cluster {cluster}: {} member(s) from the leader's list at {}", nodes.len(), leader.addr),
            );
            Ok(nodes)
        }
        Err(e) => {
            log("warning", format!("{e}; asking EC2 for the members instead"));
            from_ec2()
        }
    }
}

/// Attaches, formats if blank and mounts the node's persistent volume, if its tags ask for
/// one: None if not, else where it is mounted or why not.
fn persistent_volume(aws: &Client, namespace: &str, cluster: &str, me: &Node) -> Option<Result<String, VolumeError>> {
    let size: u32 = me.tags.get("cgcloud:ebs-volume-size").and_then(|s| s.parse().ok()).unwrap_or(0);
    if size == 0 {
        return None;
    }
    let ordinal = me.ordinal().unwrap_or(0);
    let arn = me.arn(&aws.region);
    let attached = retry(|| crate::volume::attach(aws, namespace, cluster, ordinal, &me.id, &arn, &me.zone));
    Some(attached.map_err(VolumeError::from).and_then(|id| {
        let name = crate::volume::volume_name(namespace, cluster, ordinal)?;
        let dev = crate::volume::find_device(&id, Duration::from_secs(120))
            .ok_or_else(|| VolumeError::NotAppeared { id: id.clone() })?;
        crate::volume::format_and_mount(&dev, &name)?;
        log("info", format!("persistent volume {id} ({name}) mounted at {}", crate::volume::MOUNT_POINT));
        Ok(crate::volume::MOUNT_POINT.to_owned())
    }))
}

/// Applies the plan baked into the image (`text`, read from `plan`) with the node's facts;
/// only the steps meant for first boot run, and none waits for a service to start.
fn apply_boot_plan(plan: &Path, text: &str, facts_text: &str) -> Result<(), BootError> {
    let plan: cgcloud_core::plan::Plan =
        serde_json::from_str(text).map_err(|error| BootError::Plan { path: plan.display().to_string(), error })?;
    let facts = crate::facts::Facts::parse(facts_text).map_err(BootError::Facts)?;
    let mut runner = crate::apply::Runner::new(facts, APPLY_LOG.into(), false);
    runner.no_block = true;
    runner.boot_only = true;
    if runner.run(&plan, false) {
        Ok(())
    } else {
        let what = runner.failure.take().unwrap_or_else(|| "the first-boot plan failed".to_owned());
        Err(BootError::Apply(what))
    }
}

/// Tags the node with the outcome of its first boot (`configured`, and why it failed).
fn report(aws: &Client, me: &Node, cluster: &str, result: &Result<(), BootError>) -> Result<(), AwsError> {
    let mut tags = vec![
        ("ResourceId.1", me.id.clone()),
        ("Tag.1.Key", cgcloud_core::tags::CONFIGURED.to_owned()),
        ("Tag.1.Value", if result.is_ok() { "true".to_owned() } else { "failed".to_owned() }),
    ];
    // The host key cloud-init generated for this node (its user data carries none): published
    // with the outcome, so that one call serves both, and a failed node can still be
    // inspected over SSH.
    if let Some(key) = crate::host_key::own() {
        tags.push(("Tag.2.Key", cgcloud_core::tags::HOST_KEY.to_owned()));
        tags.push(("Tag.2.Value", key));
    }
    if let Err(e) = result {
        tags.push(("Tag.3.Key", cgcloud_core::tags::FAILURE.to_owned()));
        // Tag values hold at most 256 characters; keep the end, which says where to look.
        let text = cgcloud_core::tags::printable(&e.to_string());
        let n = text.chars().count();
        let text = if n > 250 { format!("...{}", text.chars().skip(n - 247).collect::<String>()) } else { text };
        tags.push(("Tag.3.Value", text));
    }
    retry(|| aws.call(Service::Ec2, "CreateTags", &tags))?;
    log(
        "info",
        format!(
            "cluster {cluster}: node {} configured ({})",
            me.ordinal().unwrap_or(0),
            if result.is_ok() { "ok" } else { "failed" }
        ),
    );
    Ok(())
}

/// False if the image has the IMDS rule's unit and it is not active (an image without the base
/// role has none, and nothing to check).
fn imds_guarded() -> bool {
    if !Path::new(&format!("/etc/systemd/system/{IMDS_GUARD}.service")).exists() {
        return true;
    }
    crate::sys::run("systemctl", &["is-active", "--quiet", IMDS_GUARD]).is_ok()
}

/// Retries an API call for up to five minutes (a node may boot before it can reach the API).
/// The waits double and are jittered: the nodes of a big launch boot together, and if they all
/// retried in step after EC2 throttled them (DescribeInstances: a burst of 100, then 20 a
/// second per account), they would be throttled together again.
fn retry<T>(mut f: impl FnMut() -> Result<T, AwsError>) -> Result<T, AwsError> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut wait = Duration::from_millis(500);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                log("warning", format!("{e}; retrying"));
                std::thread::sleep(jittered(wait));
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Between half of `wait` and all of it ("equal jitter"). The clock's nanoseconds are random
/// enough to tell nodes apart, and need no source of randomness at boot.
pub(crate) fn jittered(wait: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let half = wait / 2;
    half + half.mul_f64(f64::from(nanos % 1_000_000) / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, ip: &str, ordinal: &str) -> Node {
        let mut tags = BTreeMap::new();
        tags.insert(cgcloud_core::tags::ORDINAL.to_owned(), ordinal.to_owned());
        Node {
            id: id.into(),
            private_ip: ip.into(),
            private_dns: format!("ip-{}.x.internal", ip.replace('.', "-")),
            tags,
            ..Default::default()
        }
    }

    #[test]
    fn retry_waits_are_jittered_within_half_and_all() {
        let wait = Duration::from_millis(800);
        let waits: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| {
                std::thread::sleep(Duration::from_micros(37));
                jittered(wait)
            })
            .collect();
        assert!(waits.iter().all(|w| *w >= wait / 2 && *w <= wait), "{waits:?}");
        assert!(waits.len() > 10, "waits barely vary: {waits:?}");
    }

    #[test]
    fn parses_instances_with_tags_and_launch_index() {
        let xml = r#"<DescribeInstancesResponse><reservationSet><item><reservationId>r-1</reservationId><ownerId>123456789012</ownerId><instancesSet><item>
            <instanceId>i-1</instanceId><privateIpAddress>10.0.0.5</privateIpAddress><privateDnsName>ip-10-0-0-5.ec2.internal</privateDnsName>
            <amiLaunchIndex>2</amiLaunchIndex><instanceLifecycle>spot</instanceLifecycle><placement><availabilityZone>us-west-2a</availabilityZone></placement>
            <tagSet><item><key>cgcloud:ordinals</key><value>1,2,5</value></item></tagSet>
            <blockDeviceMapping><item><deviceName>/dev/xvda</deviceName></item></blockDeviceMapping>
            </item></instancesSet></item></reservationSet></DescribeInstancesResponse>"#;
        let nodes = parse_nodes(xml);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].zone, "us-west-2a");
        assert_eq!(nodes[0].ordinal(), Some(5));
        assert_eq!(nodes[0].hostname(), "ip-10-0-0-5");
        assert_eq!(nodes[0].arn("us-west-2"), "arn:aws:ec2:us-west-2:123456789012:instance/i-1");
        assert_eq!(facts(&nodes[0], &nodes, "us-west-2", "/t/")["box"]["market"], "spot");
    }

    #[test]
    fn tag_facts_are_checked_before_use() {
        let mut me = node("i-1", "10.0.0.1", "0");
        me.tags.insert(cgcloud_core::tags::CLUSTER.into(), "e2e".into());
        me.tags.insert(cgcloud_core::tags::CLUSTER_TYPE.into(), "spark".into());
        assert!(check_tag_facts(&me).is_ok());
        let mut lost = me.clone();
        lost.tags.remove(cgcloud_core::tags::ORDINAL);
        assert!(matches!(check_tag_facts(&lost), Err(BootError::NoOrdinal)), "a node of no ordinal is no leader");
        for (key, bad) in [
            (cgcloud_core::tags::NODE_PREFIX, "W"),
            (cgcloud_core::tags::NODE_PREFIX, "w1"),
            (cgcloud_core::tags::CLUSTER, "x\n127.0.0.1 evil"),
            (cgcloud_core::tags::CLUSTER, "../etc"),
            (cgcloud_core::tags::CLUSTER_TYPE, "spark; rm -rf /"),
            (cgcloud_core::tags::ROLE, "a b"),
        ] {
            let mut m = me.clone();
            m.tags.insert(key.into(), bad.into());
            assert!(check_tag_facts(&m).unwrap_err().to_string().contains(key), "{key}={bad:?}");
        }
    }

    #[test]
    fn known_hosts_hold_only_well_formed_published_keys() {
        let key = format!("ssh-ed25519 {}", "A".repeat(68));
        let mut leader = node("i-l", "10.0.0.1", "0");
        leader.tags.insert(cgcloud_core::tags::HOST_KEY.into(), key.clone());
        let mut bad = node("i-b", "10.0.0.3", "2");
        bad.tags.insert(cgcloud_core::tags::HOST_KEY.into(), format!("{key}\n* ssh-ed25519 {}", "B".repeat(68)));
        let unpublished = node("i-w", "10.0.0.2", "1");
        let block = known_hosts_block("c1", &[leader, unpublished, bad]);
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(lines.len(), 3, "{block}");
        assert_eq!(
            lines[1],
            format!("10.0.0.1,ip-10-0-0-1.x.internal,ip-10-0-0-1,cluster-leader,cluster-node-0 {key}")
        );
        assert!(!block.contains('*'), "a tag smuggled in another line:\n{block}");
    }

    #[test]
    fn hosts_blocks_are_replaced_in_place() {
        let nodes = vec![node("i-l", "10.0.0.1", "0"), node("i-w", "10.0.0.2", "1")];
        let block = hosts_block("c1", &nodes);
        assert!(block.contains("10.0.0.1 ip-10-0-0-1.x.internal ip-10-0-0-1 cluster-leader cluster-node-0\n"));
        assert!(block.contains("cluster-node-1\n"));
        let hosts = "127.0.0.1 localhost\n";
        let once = replace_block(hosts, &block);
        assert_eq!(replace_block(&once, &block), once);
        let fewer = replace_block(&once, &hosts_block("c1", &nodes[..1]));
        assert!(fewer.starts_with("127.0.0.1 localhost\n") && !fewer.contains("10.0.0.2"));
        let f = facts(&nodes[1], &nodes, "us-west-2", "/ns/");
        assert_eq!(f["cluster"]["role"], "worker");
        assert_eq!(f["cluster"]["leader_ip"], "10.0.0.1");
        assert_eq!(f["cluster"]["worker_ips"][0], "10.0.0.2");
    }
}
