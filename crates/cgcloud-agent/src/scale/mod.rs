//! The leader's scaler (elastic clusters). On a cluster's leader whose tags carry bounds
//! (`cgcloud:scaling*`, `cgcloud:launch-template`, written by the workstation only), the agent
//! launches and terminates workers when Slurm's power saving asks through the scale socket
//! (`socket.rs`): from the cluster's launch template, within the bounds (`launch.rs`), and
//! never past the maximum, counting instances still shutting down. Every 30 s, and before each
//! request, it looks at its workers (`fleet.rs`): a worker whose instance went away without
//! being suspended (a spot interruption) is handed to the role's `on_vanished` hook, so Slurm
//! requeues its jobs; a launch that failed is handed to `on_failed` with EC2's reasons, and
//! offered again once its cooldown ends. The workstation is needed for none of it.
//!
//! It runs in a thread of its own, with its own AWS client, fed by the daemon (bounds, when the
//! leader's tags change) and by the socket (requests).

pub mod fleet;
pub mod launch;
pub mod socket;

use crate::aws::{AwsError, Client, Service};
use crate::log::log;
use cgcloud_core::scaling::{self, Cooldowns, Scaling, TemplateTag};
use cgcloud_core::tags::{self, Tags};
use fleet::{Fleet, Known};
use serde::{Deserialize, Serialize};
use socket::{Ask, Verb};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// `[cluster.scaling]` of the role, as `agent.json` carries it to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleConfig {
    /// Worker N is Slurm node `<node_prefix>N`.
    #[serde(default = "default_prefix")]
    pub node_prefix: String,
    /// The group that may use the socket (the one Slurm's programs run as).
    #[serde(default = "default_group")]
    pub socket_group: String,
    /// Seconds a launched worker has to join (told to `on_bounds`).
    #[serde(default = "default_ten_minutes")]
    pub resume_timeout: u64,
    #[serde(default)]
    pub on_bounds: Option<PathBuf>,
    #[serde(default)]
    pub on_failed: Option<PathBuf>,
    #[serde(default)]
    pub on_vanished: Option<PathBuf>,
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// What the scaler remembers across restarts.
    #[serde(default = "default_state")]
    pub state: PathBuf,
    /// Seconds an instance type and subnet that had no capacity are skipped.
    #[serde(default = "default_ten_minutes")]
    pub cooldown: u64,
    /// Seconds between looks at the workers.
    #[serde(default = "default_reconcile")]
    pub reconcile: u64,
}

fn default_prefix() -> String {
    "w".into()
}
fn default_group() -> String {
    "slurm".into()
}
fn default_ten_minutes() -> u64 {
    600
}
fn default_socket() -> PathBuf {
    PathBuf::from(socket::SOCKET)
}
fn default_state() -> PathBuf {
    PathBuf::from("/var/lib/cgcloud/scaler.json")
}
fn default_reconcile() -> u64 {
    30
}

/// How long a hook may run (restarting slurmctld included).
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);
/// When a launch was deferred (the cluster at its maximum while instances shut down), how soon
/// its workers are offered to Slurm again.
const DEFERRED_RETRY_SECS: u64 = 60;

/// What the leader's tags say about scaling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    pub scaling: Scaling,
    pub template: TemplateTag,
    /// The leader's own ARN, which its workers' `cgcloud:leader-arn` names.
    pub leader_arn: String,
}

impl Bounds {
    /// None for a box that is not an elastic cluster's leader.
    pub fn from_tags(t: &Tags) -> Result<Option<Bounds>, String> {
        let Some(scaling) = Scaling::from_tags(t).map_err(|e| e.to_string())? else { return Ok(None) };
        if t.get(tags::ORDINAL).map(String::as_str) != Some("0") {
            return Ok(None);
        }
        let template = TemplateTag::parse(t.get(tags::LAUNCH_TEMPLATE).map(String::as_str).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        let leader_arn = t.get(tags::LEADER_ARN).cloned().ok_or("the leader has no cgcloud:leader-arn tag")?;
        Ok(Some(Bounds { scaling, template, leader_arn }))
    }
}

/// What the scaler thread is told.
pub enum Msg {
    Bounds(Box<Bounds>),
    Ask(Ask, mpsc::Sender<Result<String, String>>),
}

/// Why the scaler could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("scale socket: no group '{0}' on this box")]
    NoGroup(String),
    #[error("scale socket {path}: {error}")]
    Socket { path: String, error: std::io::Error },
}

/// Starts the scaler thread and its socket; the daemon sends it the bounds.
pub fn start(
    cfg: ScaleConfig,
    aws: Client,
    namespace: String,
    leader_id: String,
) -> Result<mpsc::Sender<Msg>, StartError> {
    let gid = crate::keys::group_id(&cfg.socket_group).ok_or_else(|| StartError::NoGroup(cfg.socket_group.clone()))?;
    let (tx, rx) = mpsc::channel::<Msg>();
    let asks = tx.clone();
    socket::serve(&cfg.socket, gid, move |ask| {
        let (reply, answer) = mpsc::channel();
        asks.send(Msg::Ask(ask, reply)).map_err(|_| "the scaler stopped".to_owned())?;
        answer.recv_timeout(Duration::from_secs(900)).map_err(|_| "the scaler did not answer".to_owned())?
    })
    .map_err(|error| StartError::Socket { path: cfg.socket.display().to_string(), error })?;
    let known = load(&cfg.state);
    let scaler = Scaler {
        cfg,
        aws,
        namespace,
        leader_id,
        bounds: None,
        template_tags: None,
        known,
        cooldowns: Cooldowns::default(),
        calls: 0,
    };
    std::thread::spawn(move || scaler.run(rx));
    Ok(tx)
}

struct Scaler {
    cfg: ScaleConfig,
    aws: Client,
    namespace: String,
    leader_id: String,
    bounds: Option<Bounds>,
    /// The launch template's own tags: what every worker is launched with.
    template_tags: Option<Tags>,
    known: Known,
    cooldowns: Cooldowns,
    calls: u64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn load(path: &Path) -> Known {
    match crate::safefs::read(path, 16 << 20) {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            log("warning", format!("{}: {e}; starting afresh", path.display()));
            Known::default()
        }),
        Ok(None) => Known::default(),
        Err(e) => {
            log("warning", format!("{e}; starting afresh"));
            Known::default()
        }
    }
}

impl Scaler {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let every = Duration::from_secs(self.cfg.reconcile.max(1));
        let mut next = std::time::Instant::now();
        loop {
            match rx.recv_timeout(next.saturating_duration_since(std::time::Instant::now())) {
                Ok(Msg::Bounds(b)) => self.set_bounds(*b),
                Ok(Msg::Ask(ask, reply)) => {
                    let answer = self.handle(&ask);
                    if let Err(e) = &answer {
                        log("warning", format!("scale {} {}: {e}", ask.verb.as_str(), ask.nodes));
                    }
                    // The asker may have given up waiting; the work is done either way.
                    let _ = reply.send(answer);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if std::time::Instant::now() >= next {
                if let Err(e) = self.reconcile() {
                    log("warning", format!("scale: cannot look at the workers: {e}"));
                }
                next = std::time::Instant::now() + every;
            }
        }
    }

    fn set_bounds(&mut self, b: Bounds) {
        if self.bounds.as_ref() == Some(&b) {
            return;
        }
        log("info", format!("scale: bounds {} from template {}", b.scaling.summary(), b.template));
        if self.bounds.as_ref().is_none_or(|old| old.template != b.template) {
            self.template_tags = match self.read_template_tags(&b.template) {
                Ok(t) => Some(t),
                Err(e) => {
                    log("error", format!("scale: cannot read the tags of {}: {e}", b.template));
                    None
                }
            };
        }
        let s = &b.scaling;
        let env = [
            ("CGCLOUD_SCALE_PREFIX", self.cfg.node_prefix.clone()),
            ("CGCLOUD_SCALE_MIN", s.min.to_string()),
            ("CGCLOUD_SCALE_MAX", s.max.to_string()),
            ("CGCLOUD_SCALE_IDLE", s.idle_secs.to_string()),
            ("CGCLOUD_SCALE_RESUME_TIMEOUT", self.cfg.resume_timeout.to_string()),
            ("CGCLOUD_SCALE_CPUS", s.node.cpus.to_string()),
            ("CGCLOUD_SCALE_MEM", s.node.mem_mib.to_string()),
        ];
        self.bounds = Some(b);
        self.hook(self.cfg.on_bounds.as_deref(), &[], &env);
    }

    /// The template's tags (DescribeTags, which the agent may read; not the template's
    /// versions, which would show every cluster's user data), less what each launch sets.
    fn read_template_tags(&self, t: &TemplateTag) -> Result<Tags, AwsError> {
        let a = self.aws.call(
            Service::Ec2,
            "DescribeTags",
            &[("Filter.1.Name", "resource-id".into()), ("Filter.1.Value.1", t.id.clone())],
        )?;
        let mut tags: Tags =
            a.records("item", &["key", "value"]).into_iter().map(|r| (r[0].clone(), r[1].clone())).collect();
        for k in cgcloud_core::policy::scaler::LAUNCH_KEYS {
            tags.remove(k);
        }
        if tags.get(tags::NAMESPACE) != Some(&self.namespace) {
            return Err(AwsError::Parse {
                action: "DescribeTags".into(),
                detail: format!("template {} is not of namespace {}", t.id, self.namespace),
            });
        }
        Ok(tags)
    }

    fn hook(&self, hook: Option<&Path>, args: &[&str], env: &[(&str, String)]) {
        let Some(hook) = hook else { return };
        match crate::hooks::run(hook, args, env, HOOK_TIMEOUT) {
            Ok(()) => log("info", format!("scale: ran {} {}", hook.display(), args.join(" "))),
            Err(e) => log("error", format!("scale: hook not run or failed: {e}")),
        }
    }

    fn save(&self) {
        let attrs = crate::safefs::Attrs::root(0o600);
        let text = serde_json::to_vec(&self.known).unwrap_or_default();
        if let Err(e) = crate::safefs::write_atomic(&self.cfg.state, &text, attrs) {
            log("warning", format!("scale: {e}"));
        }
    }

    /// The workers now; hands vanished ones to `on_vanished`, failed ones due again to
    /// `on_failed retry`.
    fn reconcile(&mut self) -> Result<Fleet, AwsError> {
        let Some(b) = &self.bounds else { return Ok(Fleet::default()) };
        let prefix = self.cfg.node_prefix.clone();
        let nodes = self.workers(&b.leader_arn)?;
        // Workers above a lowered maximum are still this cluster's, until Slurm suspends them.
        let f = fleet::fleet(&nodes, &self.leader_id, scaling::MAX_WORKERS);
        let vanished = self.known.update(&f);
        let mut by_reason: std::collections::BTreeMap<String, BTreeSet<u32>> = Default::default();
        for (w, why) in vanished {
            by_reason.entry(why).or_default().insert(w);
        }
        for (why, workers) in by_reason {
            let list = scaling::compress(&prefix, &workers);
            log("warning", format!("scale: {list} vanished ({why})"));
            self.hook(self.cfg.on_vanished.as_deref(), &[&list, &format!("instance gone: {why}")], &[]);
        }
        let due = self.known.due(now());
        if !due.is_empty() {
            self.hook(self.cfg.on_failed.as_deref(), &["retry", &scaling::compress(&prefix, &due)], &[]);
        }
        self.cooldowns.expire(now());
        self.save();
        Ok(f)
    }

    /// The cluster's instances in any state but terminated (only the leader's).
    fn workers(&self, leader_arn: &str) -> Result<Vec<crate::cluster::Node>, AwsError> {
        let mut nodes = crate::cluster::describe_filtered(
            &self.aws,
            &[
                ("tag:cgcloud:leader-arn", &[leader_arn]),
                ("tag:cgcloud:namespace", &[self.namespace.as_str()]),
                ("instance-state-name", &["pending", "running", "shutting-down", "stopping", "stopped"]),
            ],
        )?;
        // Filters are the API's; what is acted on is checked here too.
        nodes.retain(|n| {
            n.tags.get(tags::LEADER_ARN).map(String::as_str) == Some(leader_arn)
                && n.tags.get(tags::NAMESPACE) == Some(&self.namespace)
        });
        Ok(nodes)
    }

    fn handle(&mut self, ask: &Ask) -> Result<String, String> {
        let b = self.bounds.clone().ok_or("this leader has no scaling bounds (yet)")?;
        let prefix = self.cfg.node_prefix.clone();
        let f = self.reconcile().map_err(|e| e.to_string())?;
        if ask.verb == Verb::Status {
            let live: BTreeSet<u32> = self.known.workers.keys().copied().collect();
            let failed: BTreeSet<u32> = self.known.retry_at.keys().copied().collect();
            return Ok(format!(
                "bounds {}; workers {} [{}]; failed [{}]",
                b.scaling.summary(),
                live.len(),
                scaling::compress(&prefix, &live),
                scaling::compress(&prefix, &failed)
            ));
        }
        // Launching stops at the maximum; suspending does not (a worker above a lowered maximum
        // goes as any other).
        let limit = if ask.verb == Verb::Up { b.scaling.max } else { scaling::MAX_WORKERS };
        let asked = scaling::expand(&prefix, &ask.nodes, limit).map_err(|e| e.to_string())?;
        match ask.verb {
            Verb::Up => self.up(&b, &asked, &f),
            Verb::Fail => {
                // Slurm left them down after its ResumeTimeout: offered again after a while,
                // as any failed launch.
                let said = self.down(&asked, &f)?;
                let retry = now() + DEFERRED_RETRY_SECS;
                for w in &asked {
                    self.known.retry_at.insert(*w, retry);
                }
                self.save();
                Ok(said)
            }
            _ => self.down(&asked, &f),
        }
    }

    fn up(&mut self, b: &Bounds, asked: &BTreeSet<u32>, f: &Fleet) -> Result<String, String> {
        let prefix = self.cfg.node_prefix.clone();
        let tags = self.template_tags.clone().ok_or("the launch template's tags could not be read")?;
        let busy: BTreeSet<u32> = f.live.keys().copied().collect();
        let plan = scaling::plan_launch(asked, &busy, f.instances, b.scaling.max);
        let at = now();
        self.calls += 1;
        let token = format!("{}-{at}-{}", self.leader_id, self.calls);
        let launch =
            launch::Plan { scaling: &b.scaling, template: &b.template, tags: &tags, cooldown_secs: self.cfg.cooldown };
        let aws = &self.aws;
        let mut run = |p: &[(String, String)]| {
            let params: Vec<(&str, String)> = p.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            aws.call(Service::Ec2, "RunInstances", &params)
        };
        let r = launch.resume(&mut run, &plan.launch, &mut self.cooldowns, at, &token);
        for (w, id) in &r.launched {
            self.known.workers.insert(*w, id.clone());
            self.known.retry_at.remove(w);
        }
        let mut said =
            vec![format!("launched {}", scaling::compress(&prefix, &r.launched.iter().map(|(w, _)| *w).collect()))];
        if !plan.already.is_empty() {
            said.push(format!("already up {}", scaling::compress(&prefix, &plan.already.iter().copied().collect())));
        }
        if !r.failed.is_empty() {
            let failed: BTreeSet<u32> = r.failed.iter().copied().collect();
            let list = scaling::compress(&prefix, &failed);
            let retry = self.cooldowns.next_end(at).unwrap_or(at + DEFERRED_RETRY_SECS);
            for w in &failed {
                self.known.retry_at.insert(*w, retry);
            }
            log("error", format!("scale: {list} not launched: {}", r.reason));
            self.hook(self.cfg.on_failed.as_deref(), &["down", &list, &r.reason], &[]);
            said.push(format!("failed {list}: {}", r.reason));
        }
        if !plan.deferred.is_empty() {
            let deferred: BTreeSet<u32> = plan.deferred.iter().copied().collect();
            let list = scaling::compress(&prefix, &deferred);
            let why =
                format!("at --max-workers {} ({} instances, some still shutting down)", b.scaling.max, f.instances);
            for w in &deferred {
                self.known.retry_at.insert(*w, at + DEFERRED_RETRY_SECS);
            }
            self.hook(self.cfg.on_failed.as_deref(), &["down", &list, &why], &[]);
            said.push(format!("deferred {list}: {why}"));
        }
        self.save();
        Ok(said.join("; "))
    }

    /// Suspends (or gives up on) `asked`: terminates their instances, forgotten first so that
    /// their going is not taken for a vanishing.
    fn down(&mut self, asked: &BTreeSet<u32>, f: &Fleet) -> Result<String, String> {
        let mut ids = self.known.forget(asked);
        ids.extend(asked.iter().filter_map(|w| f.live.get(w)).cloned());
        ids.sort();
        ids.dedup();
        self.known.retry_at.retain(|w, _| !asked.contains(w));
        self.save();
        for chunk in ids.chunks(500) {
            let params: Vec<(String, String)> =
                chunk.iter().enumerate().map(|(i, id)| (format!("InstanceId.{}", i + 1), id.clone())).collect();
            let params: Vec<(&str, String)> = params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            self.aws.call(Service::Ec2, "TerminateInstances", &params).map_err(|e| e.to_string())?;
        }
        Ok(format!("terminated {} instance(s) of {}", ids.len(), scaling::compress(&self.cfg.node_prefix, asked)))
    }
}

#[cfg(test)]
mod tests;
