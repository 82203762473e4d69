//! `cgcloud-agent run`: the long-running part. It keeps the managed accounts'
//! `authorized_keys` in sync with the box's key-pair patterns (read from the box's own
//! `cgcloud:keypairs` tag, so a recreated box follows its new patterns), woken at once by a
//! notification (SNS topic → this box's SQS queue) and refreshing every `interval` seconds
//! anyway (IAM group changes send no notification). Optionally it reports memory and disk
//! use. When the API is unreachable it keeps the last good keys and retries with backoff.

use crate::aws::{AwsError, Client, Service};
use crate::keys;
use cgcloud_core::keypairs;
use cgcloud_core::sigv4::Credentials;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
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
}

/// What the agent remembers across restarts: every key blob it has seen as an EC2 key pair,
/// so that keys of deleted key pairs are recognized and removed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    known: BTreeSet<String>,
}

fn log(level: &str, msg: impl AsRef<str>) {
    // systemd's journal reads the priority from the <N> prefix.
    let p = match level {
        "error" => 3,
        "warning" => 4,
        _ => 6,
    };
    eprintln!("<{p}>{level}: {}", msg.as_ref());
}

pub struct Agent {
    cfg: Config,
    aws: Client,
    instance_id: String,
    state: State,
    queue_url: Option<String>,
    /// Key pairs already warned about (named for a user but not tagged theirs).
    warned: BTreeSet<String>,
    /// Autostop as the box's tags say, its cluster and whether it leads it, from the last
    /// refresh.
    autostop: Option<crate::autostop::Setting>,
    cluster: Option<String>,
    leader: bool,
    meter: crate::autostop::Meter,
    /// When this worker last reported activity to its leader.
    reported_active: Option<Instant>,
    /// Why autostop last found the box busy (None: idle).
    busy_reason: Option<String>,
}

impl Agent {
    pub fn new(cfg: Config) -> Result<Agent, String> {
        let creds = match (&cfg.access_key_id, &cfg.secret_access_key) {
            (Some(a), Some(s)) => {
                Some(Credentials { access_key_id: a.clone(), secret_access_key: s.clone(), session_token: None })
            }
            _ => None,
        };
        let aws = Client::new(&cfg.region, cfg.endpoint.clone(), creds);
        let instance_id = match &cfg.instance_id {
            Some(i) => i.clone(),
            None => instance_id()?,
        };
        let state =
            std::fs::read_to_string(&cfg.state).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        let threshold = f64::from(cfg.idle_cpu_percent.unwrap_or(10)) / 100.0;
        Ok(Agent {
            cfg,
            aws,
            instance_id,
            state,
            queue_url: None,
            warned: BTreeSet::new(),
            autostop: None,
            cluster: None,
            leader: false,
            meter: crate::autostop::Meter::new(threshold, Instant::now()),
            reported_active: None,
            busy_reason: Some("starting".to_owned()),
        })
    }

    fn save_state(&self) {
        let text = serde_json::to_string(&self.state).unwrap_or_default();
        if let Err(e) = crate::safefs::write_atomic(&self.cfg.state, text.as_bytes(), crate::safefs::Attrs::root(0o600))
        {
            log("warning", format!("cannot save the agent's state: {e}"));
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

    /// One refresh of keys (and, on cluster nodes, of the members in /etc/hosts): returns how
    /// many accounts changed.
    pub fn sync_keys(&mut self) -> Result<usize, AwsError> {
        let tags = self.own_tags()?;
        let autostop = crate::autostop::setting(&tags);
        if autostop != self.autostop {
            match &autostop {
                Some(s) => log(
                    "info",
                    format!(
                        "autostop: {} after {} s idle",
                        if s.terminate { "terminate" } else { "stop" },
                        s.idle.as_secs()
                    ),
                ),
                None => log("info", "autostop: off"),
            }
            self.autostop = autostop;
        }
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
        // A persistent volume whose device appeared only after the boot-time wait gave up.
        match crate::volume::try_mount_persistent() {
            Ok(crate::volume::Persistent::NowMounted) => log("info", format!("mounted {}", crate::volume::MOUNT_POINT)),
            Err(e) => log("warning", e),
            Ok(_) => {}
        }
        if let Some(cluster) = tags.get(cgcloud_core::tags::CLUSTER).filter(|c| {
            let ok = cgcloud_core::tags::valid_cluster_name(c);
            if !ok {
                log("error", format!("ignoring cluster tag {c:?}: not a cluster name"));
            }
            ok
        }) {
            let nodes = crate::cluster::members(&self.aws, &self.cfg.namespace, cluster)?;
            match crate::cluster::write_membership(cluster, &nodes) {
                Ok(true) => log("info", format!("cluster {cluster}: {} member(s)", nodes.len())),
                Ok(false) => {}
                Err(e) => log("error", format!("cannot write the members of cluster {cluster}: {e}")),
            }
        }
        let patterns: Vec<String> = match tags.get(cgcloud_core::tags::KEYPAIRS).filter(|v| !v.trim().is_empty()) {
            Some(v) => v.split_whitespace().map(str::to_owned).collect(),
            None => self.cfg.keypairs.clone(),
        };
        let answer = self.aws.call(Service::Ec2, "DescribeKeyPairs", &[("IncludePublicKey", "true".into())])?;
        let pairs = parse_key_pairs(&answer.0);
        let public: BTreeMap<String, String> =
            pairs.iter().map(|(k, public)| (k.name.clone(), public.clone())).collect();
        let mut members = BTreeMap::new();
        for g in keypairs::groups(&patterns) {
            let users = group_members(&self.aws, &g)?;
            members.insert(g, users);
        }
        let available: Vec<keypairs::KeyPair> = pairs.into_iter().map(|(k, _)| k).collect();
        for (name, user) in keypairs::unowned(&patterns, &available, &members) {
            if self.warned.insert(name.to_owned()) {
                log(
                    "warning",
                    format!(
                        "key pair {name} is named for {user} but not tagged {}={user}; not trusted as theirs",
                        cgcloud_core::tags::OWNER
                    ),
                );
            }
        }
        let chosen = keypairs::expand(&patterns, &available, &members);
        let desired: Vec<String> = chosen.iter().filter_map(|n| public.get(n)).cloned().collect();
        for k in public.values() {
            if let Some(b) = keys::blob(k) {
                self.state.known.insert(b.to_owned());
            }
        }
        self.save_state();
        let mut changed = 0;
        for name in &self.cfg.accounts {
            let Some(acct) = keys::account(name) else {
                log("warning", format!("account {name} does not exist; skipping"));
                continue;
            };
            match keys::sync_account(&acct, &self.state.known, &desired) {
                Ok(true) => {
                    changed += 1;
                    log(
                        "info",
                        format!(
                            "updated the keys of {} ({} key pair(s): {})",
                            acct.name,
                            desired.len(),
                            chosen.join(" ")
                        ),
                    );
                }
                Ok(false) => {}
                Err(e) => log("error", format!("cannot update keys of {name}: {e}")),
            }
        }
        Ok(changed)
    }

    /// Makes sure this box's queue exists and receives the notification topic.
    fn ensure_queue(&mut self) -> Result<String, AwsError> {
        if let Some(u) = &self.queue_url {
            return Ok(u.clone());
        }
        let ns = cgcloud_core::Namespace::parse(&self.cfg.namespace)
            .map_err(|e| AwsError::Parse { action: "namespace".into(), detail: e.to_string() })?;
        let name = ns.agent_queue_name(&self.instance_id);
        // The queue carries its box's ARN: the box's IAM policy lets only that box use it.
        let me = crate::cluster::describe_self(&self.aws, &self.instance_id)?;
        let topic = self
            .aws
            .call(Service::Sns, "CreateTopic", &[("Name", self.cfg.topic.clone())])?
            .text("TopicArn")
            .unwrap_or_default();
        let url = self
            .aws
            .call(
                Service::Sqs,
                "CreateQueue",
                &[
                    ("QueueName", name),
                    ("Attribute.1.Name", "MessageRetentionPeriod".into()),
                    ("Attribute.1.Value", "300".into()),
                    ("Tag.1.Key", cgcloud_core::tags::QUEUE_OWNER.into()),
                    ("Tag.1.Value", me.arn(&self.cfg.region)),
                ],
            )?
            .text("QueueUrl")
            .unwrap_or_default();
        let arn = self
            .aws
            .call(
                Service::Sqs,
                "GetQueueAttributes",
                &[("QueueUrl", url.clone()), ("AttributeName.1", "QueueArn".into())],
            )?
            .text("Value")
            .unwrap_or_default();
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"}, "Action": "sqs:SendMessage",
                           "Resource": arn, "Condition": {"ArnEquals": {"aws:SourceArn": topic}}}]
        });
        self.aws.call(
            Service::Sqs,
            "SetQueueAttributes",
            &[
                ("QueueUrl", url.clone()),
                ("Attribute.1.Name", "Policy".into()),
                ("Attribute.1.Value", policy.to_string()),
            ],
        )?;
        self.aws.call(
            Service::Sns,
            "Subscribe",
            &[
                ("TopicArn", topic),
                ("Protocol", "sqs".into()),
                ("Endpoint", arn),
                ("Attributes.entry.1.key", "RawMessageDelivery".into()),
                ("Attributes.entry.1.value", "true".into()),
            ],
        )?;
        log("info", format!("listening on queue {url}"));
        self.queue_url = Some(url.clone());
        Ok(url)
    }

    /// Waits up to `wait` seconds for notifications; true if any arrived.
    fn wait_for_notification(&mut self, wait: u64) -> Result<bool, AwsError> {
        let url = self.ensure_queue()?;
        let a = self.aws.call(
            Service::Sqs,
            "ReceiveMessage",
            &[
                ("QueueUrl", url.clone()),
                ("WaitTimeSeconds", wait.min(20).to_string()),
                ("MaxNumberOfMessages", "10".into()),
                ("VisibilityTimeout", "10".into()),
            ],
        )?;
        let handles = a.texts("ReceiptHandle");
        for h in &handles {
            self.aws.call(Service::Sqs, "DeleteMessage", &[("QueueUrl", url.clone()), ("ReceiptHandle", h.clone())])?;
        }
        Ok(!handles.is_empty())
    }

    fn put_metrics(&self) -> Result<(), AwsError> {
        let values = crate::metrics::collect();
        let params = crate::metrics::put_params(&self.instance_id, &values);
        let refs: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.aws.call(Service::CloudWatch, "PutMetricData", &refs)?;
        Ok(())
    }

    /// One look at idleness (see `autostop.rs`). A worker only reports that it is busy; a
    /// leader decides for its cluster, a standalone box for itself.
    fn autostop_check(&mut self) -> Result<(), AwsError> {
        use crate::autostop;
        let Some(s) = self.autostop else { return Ok(()) };
        let now = Instant::now();
        let cpu = autostop::cpu_usage_usec(std::path::Path::new("/sys/fs/cgroup"), std::path::Path::new("/proc/stat"));
        let epoch =
            || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if let (Some(_), false) = (&self.cluster, self.leader) {
            // The role's probe is about the cluster, and it is the leader's to run.
            let connections = autostop::ssh_connections(std::path::Path::new("/proc/net"), &[]);
            let busy = self.meter.observe(now, connections, cpu, false, false);
            // At most once a check period, and only while busy: what the leader needs to know.
            if busy.is_some() && self.reported_active.is_none_or(|t| now - t >= autostop::check_every(&s)) {
                let tags = [
                    ("ResourceId.1", self.instance_id.clone()),
                    ("Tag.1.Key", cgcloud_core::tags::ACTIVE_AT.to_owned()),
                    ("Tag.1.Value", epoch().to_string()),
                ];
                self.aws.call(Service::Ec2, "CreateTags", &tags)?;
                self.reported_active = Some(now);
            }
            return Ok(());
        }
        let probe = self.cfg.busy_probe.as_deref().is_some_and(|c| autostop::probe_busy(c, Duration::from_secs(30)));
        let nodes = match &self.cluster {
            Some(c) => crate::cluster::members(&self.aws, &self.cfg.namespace, c)?,
            None => Vec::new(),
        };
        // The nodes' own SSH connections to the leader (the shared directory) are not use.
        let members: Vec<std::net::IpAddr> = nodes.iter().filter_map(|n| n.private_ip.parse().ok()).collect();
        let connections = autostop::ssh_connections(std::path::Path::new("/proc/net"), &members);
        // A worker counts as active if it said so within two check periods (and a minute).
        let recent = epoch().saturating_sub(2 * autostop::check_every(&s).as_secs() + 60);
        let peers = nodes.iter().any(|n| {
            n.id != self.instance_id
                && n.tags
                    .get(cgcloud_core::tags::ACTIVE_AT)
                    .and_then(|t| t.parse::<u64>().ok())
                    .is_some_and(|t| t >= recent)
        });
        let busy = self.meter.observe(now, connections, cpu, probe, peers);
        if busy != self.busy_reason {
            // Said when it changes: why the box is kept up, or that its idle clock runs.
            match &busy {
                Some(why) => log("info", format!("autostop: busy ({why})")),
                None => log(
                    "info",
                    format!(
                        "autostop: idle; {} after {} s",
                        if s.terminate { "terminating" } else { "stopping" },
                        s.idle.as_secs()
                    ),
                ),
            }
            self.busy_reason = busy.clone();
        }
        if busy.is_some() {
            return Ok(());
        }
        let idle = self.meter.idle_for(now);
        if idle < s.idle {
            return Ok(());
        }
        let me = crate::cluster::describe_self(&self.aws, &self.instance_id)?;
        let verb = |spot: bool| crate::autostop::power_action(s.terminate, spot);
        // Workers first (a leader's own stop would leave them running), then this box.
        let workers: Vec<&crate::cluster::Node> = nodes.iter().filter(|n| n.id != self.instance_id).collect();
        for action in ["TerminateInstances", "StopInstances"] {
            let ids: Vec<&str> =
                workers.iter().filter(|n| verb(n.lifecycle == "spot") == action).map(|n| n.id.as_str()).collect();
            if ids.is_empty() {
                continue;
            }
            let keys: Vec<String> = (1..=ids.len()).map(|i| format!("InstanceId.{i}")).collect();
            let params: Vec<(&str, String)> =
                keys.iter().map(String::as_str).zip(ids.iter().map(|i| (*i).to_owned())).collect();
            log("info", format!("autostop: the cluster was idle for {} s; {action} {}", idle.as_secs(), ids.join(" ")));
            self.aws.call(Service::Ec2, action, &params)?;
        }
        let action = verb(me.lifecycle == "spot");
        log("info", format!("autostop: idle for {} s; {action} {}", idle.as_secs(), self.instance_id));
        self.aws.call(Service::Ec2, action, &[("InstanceId.1", self.instance_id.clone())])?;
        // Whatever happens next (the box goes down), do not ask again at once.
        self.meter = crate::autostop::Meter::new(self.meter.threshold, Instant::now());
        Ok(())
    }

    /// Tags the box with its SSH host key (a box launched by someone else than cgcloud, e.g. by
    /// the Jenkins EC2 plugin, has none), so that cgcloud can verify it when it connects.
    fn publish_host_key(&self) -> Result<(), AwsError> {
        let Some(key) = own_host_key() else { return Ok(()) };
        let tags = [
            ("ResourceId.1", self.instance_id.clone()),
            ("Tag.1.Key", cgcloud_core::tags::HOST_KEY.to_owned()),
            ("Tag.1.Value", key),
        ];
        self.aws.call(Service::Ec2, "CreateTags", &tags)?;
        Ok(())
    }

    /// First-boot configuration of a cluster node (see `cluster.rs`).
    ///
    /// `cluster` is the cluster the launch says this node belongs to (`CGCLOUD_BOOT_CLUSTER`
    /// in its user data): the node then asks for the members only, and finds itself among
    /// them, one DescribeInstances instead of two (at 1000 nodes, 1000 fewer requests against
    /// EC2's rate limit). Its tags still decide: a node not listed as a member of that cluster
    /// asks for itself and goes by what its own tags say.
    pub fn boot(&mut self, plan: &std::path::Path, cluster: Option<&str>) -> Result<(), String> {
        // Tags are only as trustworthy as whoever could write them: checked (`check_tag_facts`)
        // before they reach a query, files or the plan's templates.
        let mut listed = None;
        if let Some(c) = cluster.filter(|c| cgcloud_core::tags::valid_cluster_name(c)) {
            let nodes = retry(|| crate::cluster::members(&self.aws, &self.cfg.namespace, c))?;
            let me = nodes.iter().find(|n| {
                n.id == self.instance_id && n.tags.get(cgcloud_core::tags::CLUSTER).map(String::as_str) == Some(c)
            });
            match me.cloned() {
                Some(me) => {
                    log("info", format!("first boot in cluster {c}: {} member(s), this node among them", nodes.len()));
                    crate::cluster::check_tag_facts(&me)?;
                    listed = Some((me, c.to_owned(), nodes));
                }
                None => log("warning", format!("not listed as a member of cluster {c}; going by this node's own tags")),
            }
        }
        let (me, cluster, nodes) = match listed {
            Some(found) => found,
            None => {
                let me = retry(|| crate::cluster::describe_self(&self.aws, &self.instance_id))?;
                let Some(cluster) = me.tags.get(cgcloud_core::tags::CLUSTER).cloned() else {
                    log("info", "not a cluster node; nothing to configure at first boot");
                    if !me.tags.contains_key(cgcloud_core::tags::HOST_KEY) {
                        retry(|| self.publish_host_key())?;
                    }
                    return Ok(());
                };
                crate::cluster::check_tag_facts(&me)?;
                let nodes = retry(|| crate::cluster::members(&self.aws, &self.cfg.namespace, &cluster))?;
                (me, cluster, nodes)
            }
        };
        crate::cluster::write_membership(&cluster, &nodes)?;
        let mut facts = crate::cluster::facts(&me, &nodes, &self.cfg.region, &self.cfg.namespace);
        // The persistent volume comes before the plan, so that roles can put data on it.
        let size: u32 = me.tags.get("cgcloud:ebs-volume-size").and_then(|s| s.parse().ok()).unwrap_or(0);
        let volume = if size > 0 {
            let ordinal = me.ordinal().unwrap_or(0);
            let arn = me.arn(&self.cfg.region);
            let attached = retry(|| {
                crate::volume::attach(
                    &self.aws,
                    &self.cfg.namespace,
                    &cluster,
                    ordinal,
                    &self.instance_id,
                    &arn,
                    &me.zone,
                )
            });
            let result = attached.and_then(|id| {
                let name =
                    crate::volume::volume_name(&self.cfg.namespace, &cluster, ordinal).map_err(|e| e.to_string())?;
                let dev = crate::volume::find_device(&id, Duration::from_secs(120))
                    .ok_or_else(|| format!("volume {id} was attached but no block device appeared"))?;
                crate::volume::format_and_mount(&dev, &name)?;
                log("info", format!("persistent volume {id} ({name}) mounted at {}", crate::volume::MOUNT_POINT));
                Ok(crate::volume::MOUNT_POINT.to_owned())
            });
            Some(result)
        } else {
            None
        };
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
        let _ = std::fs::create_dir_all(&data_dir);
        facts["cluster"]["persistent"] = serde_json::json!(persistent);
        facts["cluster"]["ephemeral"] = serde_json::json!(ephemeral);
        facts["cluster"]["data_dir"] = serde_json::json!(data_dir);
        let facts_text = serde_json::to_string_pretty(&facts).unwrap_or_default();
        crate::safefs::write_atomic(
            std::path::Path::new("/var/lib/cgcloud/facts.json"),
            facts_text.as_bytes(),
            crate::safefs::Attrs::root(0o644),
        )
        .map_err(|e| e.to_string())?;
        let result = match (volume, std::fs::read_to_string(plan)) {
            (Some(Err(e)), _) => Err(format!("persistent volume: {e}")),
            // A node whose IMDS rule did not load would hand its user data (the cluster's
            // secrets) and credentials to every job: it fails instead of joining.
            _ if !imds_guarded() => Err(format!(
                "IMDS is open to every user of this node: {IMDS_GUARD} is not active (systemctl status {IMDS_GUARD})"
            )),
            (_, plan_text) => match plan_text {
                Ok(text) => {
                    let plan: cgcloud_core::plan::Plan =
                        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", plan.display()))?;
                    let facts = crate::facts::Facts::parse(&facts_text)?;
                    let mut runner = crate::apply::Runner::new(facts, "/var/log/cgcloud/apply.log".into(), false);
                    runner.no_block = true;
                    runner.boot_only = true;
                    let ok = runner.run(&plan, false);
                    if ok {
                        Ok(())
                    } else {
                        let what = runner.failure.take().unwrap_or_else(|| "the first-boot plan failed".to_owned());
                        Err(format!("{what} (see /var/log/cgcloud/apply.log)"))
                    }
                }
                Err(_) => Ok(()),
            },
        };
        let mut tags = vec![
            ("ResourceId.1", self.instance_id.clone()),
            ("Tag.1.Key", cgcloud_core::tags::CONFIGURED.to_owned()),
            ("Tag.1.Value", if result.is_ok() { "true".to_owned() } else { "failed".to_owned() }),
        ];
        // The host key cloud-init generated for this node (its user data carries none): published
        // with the outcome, so that one call serves both, and a failed node can still be
        // inspected over SSH.
        if let Some(key) = own_host_key() {
            tags.push(("Tag.2.Key", cgcloud_core::tags::HOST_KEY.to_owned()));
            tags.push(("Tag.2.Value", key));
        }
        if let Err(e) = &result {
            tags.push(("Tag.3.Key", cgcloud_core::tags::FAILURE.to_owned()));
            // Tag values hold at most 256 characters; keep the end, which says where to look.
            let text = cgcloud_core::tags::printable(e);
            let n = text.chars().count();
            let text = if n > 250 { format!("...{}", text.chars().skip(n - 247).collect::<String>()) } else { text };
            tags.push(("Tag.3.Value", text));
        }
        retry(|| self.aws.call(Service::Ec2, "CreateTags", &tags))?;
        log(
            "info",
            format!(
                "cluster {cluster}: node {} configured ({})",
                me.ordinal().unwrap_or(0),
                if result.is_ok() { "ok" } else { "failed" }
            ),
        );
        result
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
                if crate::imds::life_cycle(&http).as_deref() == Ok("on-demand") {
                    return String::new();
                }
                crate::spot::watch(
                    crate::imds::IMDS,
                    std::path::Path::new(crate::spot::HOOK),
                    Duration::from_secs(5),
                    log,
                )
            });
        }
        let mut host_key_published = false;
        let mut backoff = Duration::from_secs(1);
        let mut next_refresh = Instant::now();
        let mut next_metrics = Instant::now();
        let mut next_autostop = Instant::now();
        loop {
            let result: Result<(), AwsError> = (|| {
                let now = Instant::now();
                if !host_key_published {
                    // Boxes cgcloud launches carry their key already; others learn it here.
                    if !self.own_tags()?.contains_key(cgcloud_core::tags::HOST_KEY) {
                        self.publish_host_key()?;
                        log("info", "published this box's SSH host key");
                    }
                    host_key_published = true;
                }
                if now >= next_refresh {
                    self.sync_keys()?;
                    next_refresh = Instant::now() + Duration::from_secs(self.cfg.interval);
                }
                if self.cfg.metrics && Instant::now() >= next_metrics {
                    self.put_metrics()?;
                    next_metrics = Instant::now() + Duration::from_secs(self.cfg.metrics_interval);
                }
                if let Some(s) = self.autostop {
                    if Instant::now() >= next_autostop {
                        next_autostop = Instant::now() + crate::autostop::check_every(&s);
                        self.autostop_check()?;
                    }
                }
                let mut until = if self.cfg.metrics { next_refresh.min(next_metrics) } else { next_refresh };
                if self.autostop.is_some() {
                    until = until.min(next_autostop);
                }
                let wait = until.saturating_duration_since(Instant::now()).as_secs().max(1);
                if self.wait_for_notification(wait)? {
                    // A notification: refresh now.
                    next_refresh = Instant::now();
                }
                Ok(())
            })();
            match result {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    log("warning", format!("{e}; keeping the current keys, retrying in {} s", backoff.as_secs()));
                    self.queue_url = None;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// Retries an API call for up to five minutes (a node may boot before it can reach the API).
/// The waits double and are jittered: the nodes of a big launch boot together, and if they all
/// retried in step after EC2 throttled them (DescribeInstances: a burst of 100, then 20 a
/// second per account), they would be throttled together again.
fn retry<T>(mut f: impl FnMut() -> Result<T, AwsError>) -> Result<T, String> {
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
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Between half of `wait` and all of it ("equal jitter"). The clock's nanoseconds are random
/// enough to tell nodes apart, and need no source of randomness at boot.
fn jittered(wait: Duration) -> Duration {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let half = wait / 2;
    half + half.mul_f64(f64::from(nanos % 1_000_000) / 1_000_000.0)
}

/// This box's instance id: cloud-init's record (EC2 and the local cloud), else IMDS.
fn instance_id() -> Result<String, String> {
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

/// The user names of IAM group `g` (none if it does not exist). GetGroup returns at most 100
/// users a page: the marker is followed to the end.
fn group_members(aws: &Client, g: &str) -> Result<Vec<String>, AwsError> {
    let mut users = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut params = vec![("GroupName", g.to_owned())];
        if let Some(m) = marker.take() {
            params.push(("Marker", m));
        }
        match aws.call(Service::Iam, "GetGroup", &params) {
            Ok(a) => {
                users.extend(a.texts("UserName"));
                if a.text("IsTruncated").as_deref() == Some("true") {
                    marker = a.text("Marker").filter(|m| !m.is_empty());
                }
                if marker.is_none() {
                    return Ok(users);
                }
            }
            Err(AwsError::Service { code, .. }) if code == "NoSuchEntity" => return Ok(users),
            Err(e) => return Err(e),
        }
    }
}

/// The base role's unit that keeps IMDS for root and the role's `imds_users`.
const IMDS_GUARD: &str = "cgcloud-imds-guard";

/// False if the image has the IMDS rule's unit and it is not active (an image without the base
/// role has none, and nothing to check).
fn imds_guarded() -> bool {
    if !std::path::Path::new(&format!("/etc/systemd/system/{IMDS_GUARD}.service")).exists() {
        return true;
    }
    std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", IMDS_GUARD])
        .status()
        .is_ok_and(|s| s.success())
}

/// This box's SSH host public key as `ssh-ed25519 AAAA…` (no comment), if sshd has one.
fn own_host_key() -> Option<String> {
    let text = std::fs::read_to_string("/etc/ssh/ssh_host_ed25519_key.pub").ok()?;
    let mut fields = text.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(t @ "ssh-ed25519"), Some(blob)) => Some(format!("{t} {blob}")),
        _ => {
            log("warning", "/etc/ssh/ssh_host_ed25519_key.pub is not an ed25519 public key; not publishing it");
            None
        }
    }
}

/// The key pairs of a DescribeKeyPairs answer that have a public key, with their owner tag.
fn parse_key_pairs(xml: &str) -> Vec<(keypairs::KeyPair, String)> {
    use crate::aws::child_text as child;
    let Ok(doc) = roxmltree::Document::parse(xml) else { return Vec::new() };
    doc.descendants()
        .filter(|n| n.tag_name().name() == "item" && n.children().any(|c| c.tag_name().name() == "keyName"))
        .filter_map(|n| {
            let (name, public) = (child(n, "keyName"), child(n, "publicKey"));
            let owner = n
                .children()
                .filter(|c| c.tag_name().name() == "tagSet")
                .flat_map(|ts| ts.children().filter(|i| i.tag_name().name() == "item"))
                .find(|i| child(*i, "key") == cgcloud_core::tags::OWNER)
                .map(|i| child(i, "value"));
            (!name.is_empty() && !public.is_empty()).then_some((keypairs::KeyPair { name, owner }, public))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn groups_of_more_than_a_page_are_read_to_the_end() {
        let endpoint = testkit::fake_iam_with_big_group("big", 230);
        let creds = Credentials { access_key_id: "a".into(), secret_access_key: "b".into(), session_token: None };
        let aws = Client::new("us-west-2", Some(endpoint), Some(creds));
        let users = group_members(&aws, "big").unwrap();
        assert_eq!(users.len(), 230);
        assert_eq!(users.first().map(String::as_str), Some("user0"));
        assert_eq!(users.last().map(String::as_str), Some("user229"));
    }

    #[test]
    fn key_pairs_with_their_owner_tag() {
        let xml = r#"<DescribeKeyPairsResponse><keySet>
            <item><keyName>alice@laptop</keyName><publicKey>ssh-ed25519 AAAA1</publicKey>
              <tagSet><item><key>Name</key><value>x</value></item><item><key>cgcloud:owner</key><value>alice</value></item></tagSet></item>
            <item><keyName>alice@evil</keyName><publicKey>ssh-ed25519 AAAA2</publicKey><tagSet/></item>
            <item><keyName>nokey</keyName></item>
            </keySet></DescribeKeyPairsResponse>"#;
        let pairs = parse_key_pairs(xml);
        assert_eq!(pairs.len(), 2, "{pairs:?}");
        assert_eq!(pairs[0].0, keypairs::KeyPair::new("alice@laptop", Some("alice")));
        assert_eq!(pairs[0].1, "ssh-ed25519 AAAA1");
        assert_eq!(pairs[1].0, keypairs::KeyPair::new("alice@evil", None));
    }
}
