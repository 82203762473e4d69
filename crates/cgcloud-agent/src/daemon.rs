//! `cgcloud-agent run`: the long-running loop that ties the agent's duties together. Every
//! `interval` seconds, and at once when a notification arrives on the box's queue
//! (`queue.rs`; IAM group changes send none, hence the interval), it reads the box's own tags
//! and refreshes what they govern: the managed accounts' `authorized_keys` (`keys.rs`, with the
//! key-pair patterns of the box's `cgcloud:keypairs` tag, so a recreated box follows its new
//! patterns), the cluster's members (`cluster.rs`), a late persistent volume (`volume.rs`) and
//! the autostop setting (`autostop.rs`). Between refreshes it reports metrics (`metrics.rs`)
//! and looks at idleness. When the API is unreachable it keeps the last good keys and retries
//! with backoff. It also owns the agent's config file (`/etc/cgcloud/agent.json`).

use crate::autostop;
use crate::aws::{AwsError, Client, Service};
use crate::keys::KeySync;
use crate::log::log;
use crate::queue::Queue;
use cgcloud_core::sigv4::Credentials;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const TOPIC: &str = cgcloud_core::AGENT_TOPIC;

fn default_interval() -> u64 {
    300
}
fn default_metrics_interval() -> u64 {
    60
}
fn default_state() -> PathBuf {
    PathBuf::from("/var/lib/cgcloud/agent-state.json")
}
fn default_topic() -> String {
    TOPIC.to_owned()
}

/// /etc/cgcloud/agent.json, written when the box is provisioned.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub namespace: String,
    pub region: String,
    /// An EC2-compatible endpoint (the local cloud); AWS's own endpoints otherwise.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Static credentials (the local cloud); the instance profile otherwise.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Local accounts whose authorized_keys are kept in sync.
    pub accounts: Vec<String>,
    /// Key-pair patterns used when the box's tag cannot be read.
    pub keypairs: Vec<String>,
    #[serde(default = "default_interval")]
    pub interval: u64,
    #[serde(default)]
    pub metrics: bool,
    #[serde(default = "default_metrics_interval")]
    pub metrics_interval: u64,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default = "default_topic")]
    pub topic: String,
    #[serde(default = "default_state")]
    pub state: PathBuf,
    /// A command that exits 0 while the box (or its cluster) is busy, for autostop (the role's
    /// `[agent] busy_probe`, e.g. "Slurm has jobs").
    #[serde(default)]
    pub busy_probe: Option<String>,
    /// CPU use, in percent of one core, below which a box counts as idle (default 10).
    #[serde(default)]
    pub idle_cpu_percent: Option<u32>,
    /// The role's `[cluster.scaling]`: on an elastic cluster's leader, the agent scales its
    /// workers (`scale/`).
    #[serde(default)]
    pub scaling: Option<crate::scale::ScaleConfig>,
}

pub struct Agent {
    cfg: Config,
    aws: Client,
    instance_id: String,
    keys: KeySync,
    queue: Queue,
    autostop: autostop::Watch,
    /// The box's cluster and whether it leads it, from the last refresh.
    cluster: Option<String>,
    leader: bool,
    creds: Option<Credentials>,
    /// The scaler's thread, once the leader's tags gave it bounds.
    scaler: Option<std::sync::mpsc::Sender<crate::scale::Msg>>,
    /// On a leader: the member list it serves, once started.
    publisher: Option<std::sync::Arc<crate::members::Publisher>>,
    /// On a worker: the leader whose list it takes, as its first boot recorded it.
    members_leader: Option<crate::members::Leader>,
}

impl Agent {
    pub fn new(cfg: Config) -> Result<Agent, crate::imds::ImdsError> {
        let creds = match (&cfg.access_key_id, &cfg.secret_access_key) {
            (Some(a), Some(s)) => {
                Some(Credentials { access_key_id: a.clone(), secret_access_key: s.clone(), session_token: None })
            }
            _ => None,
        };
        let aws = Client::new(&cfg.region, cfg.endpoint.clone(), creds.clone());
        let instance_id = match &cfg.instance_id {
            Some(i) => i.clone(),
            None => instance_id()?,
        };
        Ok(Agent {
            keys: KeySync::load(cfg.state.clone()),
            queue: Queue::new(&cfg.namespace, &instance_id, &cfg.topic),
            autostop: autostop::Watch::new(cfg.idle_cpu_percent, cfg.busy_probe.clone()),
            cfg,
            aws,
            instance_id,
            cluster: None,
            leader: false,
            creds,
            scaler: None,
            publisher: None,
            members_leader: None,
        })
    }

    /// On an elastic cluster's leader: gives the scaler the bounds in its tags, starting it the
    /// first time. Bounds that do not parse leave the scaler as it was, and say why.
    fn scale(&mut self, tags: &BTreeMap<String, String>) {
        let Some(cfg) = self.cfg.scaling.clone().filter(|_| self.leader) else { return };
        let bounds = match crate::scale::Bounds::from_tags(tags) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                log("error", format!("scale: the leader's bounds are unusable: {e}"));
                return;
            }
        };
        if self.scaler.is_none() {
            let aws = Client::new(&self.cfg.region, self.cfg.endpoint.clone(), self.creds.clone());
            match crate::scale::start(cfg, aws, self.cfg.namespace.clone(), self.instance_id.clone()) {
                Ok(tx) => self.scaler = Some(tx),
                Err(e) => {
                    log("error", format!("scale: not started: {e}"));
                    return;
                }
            }
        }
        if let Some(tx) = &self.scaler {
            if tx.send(crate::scale::Msg::Bounds(Box::new(bounds))).is_err() {
                log("error", "scale: the scaler stopped; restarting it at the next refresh");
                self.scaler = None;
            }
        }
    }

    /// On a leader with the cluster key: serves the member list (started once; tried again at
    /// the next refresh if it failed). On a worker whose first boot was told its leader: the
    /// leader to take the list from. Clusters made before the key existed have neither.
    fn members_source(&mut self) {
        use crate::members::{Leader, KEY_PATH, LEADER_FILE};
        let Some(cluster) = self.cluster.clone() else { return };
        if !Path::new(KEY_PATH).exists() {
            return;
        }
        if self.leader && self.publisher.is_none() {
            let aws = Client::new(&self.cfg.region, self.cfg.endpoint.clone(), self.creds.clone());
            match crate::members::start_publishing(aws, &self.cfg.namespace, &cluster, &self.instance_id) {
                Ok(p) => self.publisher = Some(p),
                Err(e) => log("warning", format!("members: not serving the member list yet: {e}")),
            }
        }
        if !self.leader && self.members_leader.is_none() {
            let ip = std::fs::read_to_string(LEADER_FILE).ok().and_then(|s| s.trim().parse().ok());
            // A refresh waits for the leader briefly: the EC2 query is the fallback.
            match ip.map(|ip| Leader::new(ip, Path::new(KEY_PATH), Duration::from_secs(10), true)) {
                Some(Ok(l)) => self.members_leader = Some(l),
                Some(Err(e)) => log("warning", format!("members: {e}")),
                None => {}
            }
        }
    }

    /// The box's own tags.
    fn own_tags(&self) -> Result<BTreeMap<String, String>, AwsError> {
        let a = self.aws.call(
            Service::Ec2,
            "DescribeTags",
            &[("Filter.1.Name", "resource-id".into()), ("Filter.1.Value.1", self.instance_id.clone())],
        )?;
        Ok(a.records("item", &["key", "value"]).into_iter().map(|r| (r[0].clone(), r[1].clone())).collect())
    }

    /// One refresh of what the box's tags govern: keys (and, on cluster nodes, the members in
    /// /etc/hosts, autostop, launch flags): returns how many accounts changed.
    pub fn sync_keys(&mut self) -> Result<usize, AwsError> {
        let tags = self.own_tags()?;
        self.autostop.set(autostop::setting(&tags));
        // Launch flags (`--metrics`, `--agent-interval`) reach boxes whose agent.json is their
        // image's (recreated boxes, cluster nodes) as tags, which win over it.
        if tags.get(cgcloud_core::tags::METRICS).is_some_and(|v| v == "true") && !self.cfg.metrics {
            log("info", "metrics: on (launched with --metrics)");
            self.cfg.metrics = true;
        }
        if let Some(i) = tags
            .get(cgcloud_core::tags::AGENT_INTERVAL)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|i| (5..=86_400).contains(i) && *i != self.cfg.interval)
        {
            log("info", format!("refresh interval: {i} s (launched with --agent-interval)"));
            self.cfg.interval = i;
        }
        self.cluster = tags.get(cgcloud_core::tags::CLUSTER).cloned();
        self.leader = self.cluster.is_some() && tags.get(cgcloud_core::tags::ORDINAL).map(String::as_str) == Some("0");
        self.scale(&tags);
        // A persistent volume whose device appeared only after the boot-time wait gave up.
        match crate::volume::try_mount_persistent() {
            Ok(crate::volume::Persistent::NowMounted) => log("info", format!("mounted {}", crate::volume::MOUNT_POINT)),
            Err(e) => log("warning", e.to_string()),
            Ok(_) => {}
        }
        self.members_source();
        crate::cluster::refresh_membership(
            &self.aws,
            &self.cfg.namespace,
            &self.instance_id,
            &tags,
            self.members_leader.as_ref(),
        )?;
        let patterns: Vec<String> = match tags.get(cgcloud_core::tags::KEYPAIRS).filter(|v| !v.trim().is_empty()) {
            Some(v) => v.split_whitespace().map(str::to_owned).collect(),
            None => self.cfg.keypairs.clone(),
        };
        self.keys.sync(&self.aws, &patterns, &self.cfg.accounts)
    }

    /// First-boot configuration of a cluster node (see `cluster.rs`).
    pub fn boot(
        &mut self,
        plan: &Path,
        cluster: Option<&str>,
        leader: Option<&crate::members::Leader>,
    ) -> Result<(), crate::cluster::BootError> {
        crate::cluster::first_boot(&self.aws, &self.cfg.namespace, &self.instance_id, plan, cluster, leader)
    }

    /// The agent's EC2 client and namespace (`cgcloud-agent members serve`).
    pub fn into_parts(self) -> (Client, String) {
        (self.aws, self.cfg.namespace)
    }

    /// Runs forever.
    pub fn run(mut self) -> ! {
        log(
            "info",
            format!(
                "cgcloud-agent {} on {} in namespace {}",
                env!("CARGO_PKG_VERSION"),
                self.instance_id,
                self.cfg.namespace
            ),
        );
        // Where credentials come from IMDS (EC2, the local cloud), watch for a spot interruption
        // notice; an on-demand instance never gets one, so it does not poll.
        if self.cfg.access_key_id.is_none() {
            std::thread::spawn(|| {
                let http = ureq::AgentBuilder::new().timeout(Duration::from_secs(3)).build();
                if crate::imds::life_cycle(&http).is_ok_and(|l| l == "on-demand") {
                    return String::new();
                }
                crate::interruption::watch(
                    crate::imds::IMDS,
                    Path::new(crate::interruption::HOOK),
                    Duration::from_secs(5),
                    log,
                )
            });
        }
        let mut schedule = Schedule::new();
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.turn(&mut schedule) {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    log("warning", format!("{e}; keeping the current keys, retrying in {} s", backoff.as_secs()));
                    self.queue.reset();
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One turn of the loop: whatever is due, then a wait on the queue until the next thing is.
    fn turn(&mut self, at: &mut Schedule) -> Result<(), AwsError> {
        let now = Instant::now();
        if !at.host_key_published {
            // Boxes cgcloud launches carry their key already; others learn it here.
            if !self.own_tags()?.contains_key(cgcloud_core::tags::HOST_KEY) {
                crate::host_key::publish(&self.aws, &self.instance_id)?;
                log("info", "published this box's SSH host key");
            }
            at.host_key_published = true;
        }
        if now >= at.refresh {
            self.sync_keys()?;
            at.refresh = Instant::now() + Duration::from_secs(self.cfg.interval);
        }
        if self.cfg.metrics && Instant::now() >= at.metrics {
            crate::metrics::put(&self.aws, &self.instance_id)?;
            at.metrics = Instant::now() + Duration::from_secs(self.cfg.metrics_interval);
        }
        if let Some(s) = self.autostop.setting() {
            if Instant::now() >= at.autostop {
                at.autostop = Instant::now() + autostop::check_every(&s);
                let place = autostop::Place {
                    instance_id: &self.instance_id,
                    namespace: &self.cfg.namespace,
                    cluster: self.cluster.as_deref(),
                    leader: self.leader,
                };
                self.autostop.check(&self.aws, &place)?;
            }
        }
        let mut until = if self.cfg.metrics { at.refresh.min(at.metrics) } else { at.refresh };
        if self.autostop.setting().is_some() {
            until = until.min(at.autostop);
        }
        let wait = until.saturating_duration_since(Instant::now()).as_secs().max(1);
        if self.queue.wait(&self.aws, wait)? {
            // A notification: refresh now.
            at.refresh = Instant::now();
        }
        Ok(())
    }
}

/// When the loop next does each of its duties.
struct Schedule {
    host_key_published: bool,
    refresh: Instant,
    metrics: Instant,
    autostop: Instant,
}

impl Schedule {
    fn new() -> Schedule {
        let now = Instant::now();
        Schedule { host_key_published: false, refresh: now, metrics: now, autostop: now }
    }
}

/// This box's instance id: cloud-init's record (EC2 and the local cloud), else IMDS.
fn instance_id() -> Result<String, crate::imds::ImdsError> {
    for p in ["/var/lib/cloud/data/instance-id", "/run/cloud-init/.instance-id"] {
        if let Ok(id) = std::fs::read_to_string(p) {
            let id = id.trim();
            if id.starts_with("i-") {
                return Ok(id.to_owned());
            }
        }
    }
    let http = ureq::AgentBuilder::new().timeout(Duration::from_secs(3)).build();
    crate::imds::instance_id(&http)
}
