//! Launching boxes: `create` (from the role's base image, then provisioning), `recreate` (from
//! a baked image) and `provision` (re-run provisioning on a box). A launch is a transaction:
//! if anything fails or the user presses Ctrl-C, everything this launch created is removed,
//! unless --never-terminate.

use super::boxes::{print_box, wait_for_state};
use super::images::{bake_image, pick_image};
use super::provision::provision;
use crate::cli::{CreateArgs, LaunchArgs, RecreateArgs, SelectArgs, SpotArgs};
use crate::context::Ctx;
use anyhow::{anyhow, bail, Context as _, Result};
use cgcloud_aws::ec2::{FoundImage, InstanceTypeInfo, LaunchSpec, Network, SgRule, SgSource};
use cgcloud_aws::Cloud;
use cgcloud_core::glob::is_glob;
use cgcloud_core::keypairs;
use cgcloud_core::model::{BoxInfo, ImageInfo};
use cgcloud_core::plan::{Action, On, Step};
use cgcloud_core::policy::Policy;
use cgcloud_core::tags::{self, Tags};
use cgcloud_core::userdata::cloud_config;
use cgcloud_core::Namespace;
use cgcloud_roles::compile::compile;
use cgcloud_roles::os::{Arch, ImageSource, OsDef};
use cgcloud_roles::role::{Proto, Role};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The instance type used when neither the user nor the role names one.
const FALLBACK_INSTANCE_TYPE: &str = "t3.micro";

/// EC2's limit on a tag value, in characters.
const MAX_TAG_VALUE: usize = 256;

/// EC2's limit on user data, in bytes before base64.
const MAX_USER_DATA: usize = 16 * 1024;

/// IAM's limit on a role or instance-profile name.
const MAX_IAM_NAME: usize = 64;

/// What a launch will use on this machine once instances exist. [`prepare`] checks all of it
/// before anything is created, so that a missing tool or agent never costs a launch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LocalNeeds {
    /// `ssh`: the launch waits for SSH on the new boxes.
    pub ssh: bool,
    /// The agent (`cgcloud-agent` beside cgcloud, `CGCLOUD_AGENT_BINARY` or a release URL and
    /// checksum): the launch provisions the box.
    pub agent: bool,
    /// `rsync`: the launch copies files to a box.
    pub rsync: bool,
}

/// Checks everything in `needs` (and `ssh-keygen`, which makes every box's host key).
pub(crate) fn check_local_needs(ctx: &Ctx, needs: LocalNeeds) -> Result<()> {
    let mut programs = vec!["ssh-keygen"];
    let mut why = vec!["to make the boxes' SSH host keys"];
    if needs.ssh {
        programs.push("ssh");
        why.push("to reach the boxes");
    }
    if needs.rsync {
        programs.push("rsync");
        why.push("to copy files to them");
    }
    cgcloud_remote::require_programs(&programs, &why.join(" and "))?;
    if needs.agent {
        super::provision::check_agent(ctx)?;
    }
    Ok(())
}

/// Everything decided before the first resource is created.
pub(crate) struct Prepared {
    ns: Namespace,
    role: Role,
    os: OsDef,
    image: FoundImage,
    pub(crate) instance_type: String,
    /// What DescribeInstanceTypes said of the instance types used so far.
    pub(crate) type_info: BTreeMap<String, InstanceTypeInfo>,
    pub(crate) network: Network,
    key_name: String,
    keypair_patterns: Vec<String>,
    authorized_keys: Vec<String>,
    options: BTreeMap<String, String>,
    generation: u32,
    owner: String,
    /// The agent's settings, unless --no-agent.
    agent: Option<AgentSetup>,
    /// Files written at first boot: a cluster's secrets (`[[cluster.secrets]]`).
    pub(crate) secrets: Vec<cgcloud_core::userdata::SecretFile>,
    /// Autostop: idle seconds, and whether to terminate rather than stop.
    pub(crate) autostop: Option<(u64, bool)>,
}

/// How the agent runs on the boxes of a launch.
#[derive(Debug, Clone)]
struct AgentSetup {
    metrics: bool,
    interval: u64,
    /// `--metrics` and `--agent-interval` as given: also tags, which the agent honours over its
    /// configuration file (boxes recreated from an image, cluster nodes: their agent.json is
    /// the image's).
    flags: Tags,
    accounts: Vec<String>,
    busy_probe: Option<String>,
    idle_cpu_percent: Option<u32>,
}

/// What a launch has created so far, shared with the rollback path.
#[derive(Debug, Default)]
struct TxnState {
    instances: Vec<String>,
    security_group: Option<String>,
    instance_profile: Option<String>,
    /// A persistent volume this launch created (an existing one is never removed).
    volume: Option<String>,
    /// The rollback asked EC2 to terminate `instances`.
    terminating: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Txn {
    pub(crate) id: String,
    /// This process (`cgcloud:launcher`).
    pub(crate) launcher: String,
    state: Arc<Mutex<TxnState>>,
}

impl Txn {
    pub(crate) fn new() -> Txn {
        let id = format!("l-{:016x}", rand::random::<u64>());
        Txn { id, launcher: launcher_id(), state: Arc::new(Mutex::new(TxnState::default())) }
    }

    /// The tags of what this launch creates until it completes (`cleanup` finds them if it
    /// is interrupted).
    fn pending_tags(&self) -> Tags {
        let mut t = Tags::new();
        t.insert(tags::LAUNCH.into(), self.id.clone());
        t.insert(tags::LAUNCH_STATE.into(), tags::LAUNCH_PENDING.into());
        t.insert(tags::LAUNCHER.into(), self.launcher.clone());
        t
    }

    fn with<R>(&self, f: impl FnOnce(&mut TxnState) -> R) -> R {
        match self.state.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

fn launch_patterns(ctx: &Ctx, a: &LaunchArgs) -> Vec<String> {
    if !a.keypairs.is_empty() {
        a.keypairs.clone()
    } else if !ctx.settings.keypairs.is_empty() {
        ctx.settings.keypairs.clone()
    } else {
        vec![cgcloud_core::namespace::ME.to_owned()]
    }
}

/// Resolves the key pairs: the first is installed by EC2 and must exist; the others are
/// expanded and their public keys handed to cloud-init.
async fn resolve_keypairs(ctx: &Ctx, cloud: &Cloud, patterns: &[String]) -> Result<(String, Vec<String>, Vec<String>)> {
    let mut resolved = Vec::new();
    for p in patterns {
        resolved.push(ctx.resolve_keypair(p).await?);
    }
    let first = resolved.first().cloned().context("no key pair given")?;
    if is_glob(&first) || first.starts_with('@') {
        bail!(
            "the first key pair must be a plain name, not '{first}': EC2 installs it, and your SSH client \
             must hold its private key; put globs, @user and @@group after it"
        );
    }
    let Some(primary) = cloud.key_pair(&first).await? else {
        bail!(
            "key pair '{first}' does not exist in region {}; register your public key first: \
             `cgcloud register-key ~/.ssh/id_ed25519.pub`{}",
            cloud.region,
            if patterns.first().is_some_and(|p| p.contains(cgcloud_core::namespace::ME)) {
                String::new()
            } else {
                format!(" -k {first}")
            }
        );
    };
    let mut authorized = Vec::new();
    if resolved.len() > 1 {
        let all = cloud.key_pairs().await?;
        let available: Vec<keypairs::KeyPair> =
            all.iter().map(|k| keypairs::KeyPair::new(&k.name, k.owner.as_deref())).collect();
        let mut members = BTreeMap::new();
        for g in keypairs::groups(&resolved[1..]) {
            members.insert(g.clone(), cloud.group_members(&g).await?);
        }
        for (name, user) in keypairs::unowned(&resolved[1..], &available, &members) {
            tracing::warn!(
                "key pair {name} is named for {user} but not tagged {}={user}, so @{user} does not trust it; \
                 {user} can tag it by registering it again: `cgcloud register-key <its public key> -k {name}`",
                tags::OWNER
            );
        }
        for name in keypairs::expand(&resolved[1..], &available, &members) {
            if name == primary.name {
                continue;
            }
            if let Some(k) = all.iter().find(|k| k.name == name).and_then(|k| k.public_key.clone()) {
                authorized.push(k.trim().to_owned());
            }
        }
    }
    Ok((first, resolved, authorized))
}

/// Finds the role's base image for `arch`, the same way on AWS and on the local cloud.
async fn base_image(cloud: &Cloud, os: &OsDef, arch: Arch) -> Result<FoundImage> {
    let src: &ImageSource = &os.image;
    if let Some(param) = &src.ssm {
        let name = ImageSource::expand(param, arch);
        if let Some(id) = cloud.ssm_parameter(&name).await? {
            if let Some(img) = cloud.image_by_id(&id).await? {
                return Ok(img);
            }
        }
    }
    if let Some(pattern) = &src.name {
        let pattern = ImageSource::expand(pattern, arch);
        if let Some(img) = cloud.newest_image(&src.owners, &pattern, arch.ec2()).await? {
            return Ok(img);
        }
        bail!(
            "no {} image for {} found in region {} (looked for owner {} and name '{pattern}'); \
             pass --boot-image AMI_ID to use a specific image",
            os.name,
            arch.ec2(),
            cloud.region,
            src.owners.join(",")
        );
    }
    bail!("no {} image for {} found in region {}", os.name, arch.ec2(), cloud.region)
}

fn sg_rules(role: &Role) -> Vec<SgRule> {
    role.ports
        .iter()
        .map(|p| {
            let (from_port, to_port) = p.ec2_range();
            SgRule {
                protocol: match p.proto {
                    Proto::Tcp => "tcp".into(),
                    Proto::Udp => "udp".into(),
                    Proto::Icmp => "icmp".into(),
                    Proto::All => "-1".into(),
                },
                from_port,
                to_port,
                source: match p.from.as_str() {
                    "anywhere" => SgSource::Cidr("0.0.0.0/0".into()),
                    "cluster" => SgSource::OwnGroup,
                    cidr => SgSource::Cidr(cidr.into()),
                },
                description: p.description.clone(),
            }
        })
        .collect()
}

/// The policy of a role's boxes: the role's own statements, plus what the agent needs
/// (`cgcloud_core::policy::agent_statements`, evaluated in that module's tests).
pub(crate) fn iam_policy(ns: &Namespace, role: &Role, agent: bool) -> Result<Policy> {
    let mut statements = Vec::new();
    for s in &role.iam {
        statements.push(
            s.render(ns.as_str(), &ns.iam_path(), &ns.aws_prefix())
                .map_err(|e| anyhow!("role '{}': {e}", role.name))?,
        );
    }
    if agent {
        statements.extend(cgcloud_core::policy::agent_statements(ns.as_str(), &ns.agent_queue_prefix()));
    }
    let policy = Policy { statements };
    // Checked before anything is launched: with one of these tags, a box could plant a leader
    // in a cluster or a volume on a node.
    if let Some(how) = cgcloud_core::policy::writes_workstation_tags(&policy) {
        bail!(
            "role '{}': its [[iam]] statements let its boxes write {how}, a tag cluster nodes trust and only \
             the workstation may write; narrow ec2:CreateTags with a ForAllValues:StringEquals condition on aws:TagKeys",
            role.name
        );
    }
    Ok(policy)
}

/// The agent's configuration file and service, appended to the role's plan.
fn agent_steps(ctx: &Ctx, p: &Prepared, region: &str) -> Vec<Step> {
    let Some(a) = &p.agent else { return Vec::new() };
    let s = &ctx.settings.agent;
    let config = serde_json::json!({
        "namespace": p.ns.as_str(),
        "region": region,
        "endpoint": s.endpoint,
        "access_key_id": s.access_key_id,
        "secret_access_key": s.secret_access_key,
        "accounts": a.accounts,
        "keypairs": p.keypair_patterns,
        "interval": a.interval,
        "metrics": a.metrics,
        "busy_probe": a.busy_probe,
        "idle_cpu_percent": a.idle_cpu_percent,
    });
    let unit = "[Unit]\nDescription=cgcloud agent: SSH key sync and metrics\nAfter=network-online.target\nWants=network-online.target\n\n\
                [Service]\nExecStart=/usr/local/bin/cgcloud-agent run --config /etc/cgcloud/agent.json\nRestart=always\nRestartSec=5\n\n\
                [Install]\nWantedBy=multi-user.target\n";
    // Every boot, before the services that keep data there: instance-store disks are blank
    // after a stop/start, and the persistent volume's nofail mount is ordered before nothing.
    let storage_unit = "[Unit]\nDescription=cgcloud: persistent volume and instance-store disks\nAfter=local-fs.target\n\
                        Before=cgcloud-agent.service\n\n\
                        [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/bin/cgcloud-agent storage\n\n\
                        [Install]\nWantedBy=multi-user.target\n";
    vec![
        Step {
            title: "service cgcloud-storage".into(),
            on: On::All,
            action: Action::Service {
                name: "cgcloud-storage".into(),
                unit: Some(storage_unit.into()),
                enable: true,
                start: true,
                restart_on: Vec::new(),
            },
        },
        Step {
            title: "agent configuration".into(),
            on: On::All,
            action: Action::File {
                path: "/etc/cgcloud/agent.json".into(),
                content: serde_json::to_string_pretty(&config).unwrap_or_default() + "\n",
                owner: Some("root".into()),
                group: Some("root".into()),
                mode: Some("0600".into()),
                template: false,
            },
        },
        Step {
            title: "service cgcloud-agent".into(),
            on: On::All,
            action: Action::Service {
                name: "cgcloud-agent".into(),
                unit: Some(unit.into()),
                enable: true,
                start: true,
                restart_on: vec!["/etc/cgcloud/agent.json".into(), "/usr/local/bin/cgcloud-agent".into()],
            },
        },
    ]
}

/// Role options recorded in the tags of `what` (a box or an image), validated as if given on
/// the command line: tags can be written by others than cgcloud (a box can tag itself), and
/// option values end up in files and commands run as root. Options the role no longer has are
/// dropped with a warning.
pub(crate) fn options_from_tags(
    role: &Role,
    options: impl IntoIterator<Item = (String, String)>,
    what: &str,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (name, value) in options {
        if !role.options.contains_key(&name) {
            tracing::warn!("{what} carries option '{name}', which role '{}' does not have; ignoring it", role.name);
            continue;
        }
        let (name, value) = role
            .parse_option(&format!("{name}={value}"))
            .with_context(|| format!("{what} carries a bad value for option '{name}' in its tags"))?;
        out.insert(name, value);
    }
    Ok(out)
}

/// Resolves and checks everything a launch needs, creating nothing: whatever can fail here
/// must not fail after the first resource exists.
pub(crate) async fn prepare(
    ctx: &Ctx,
    role: Role,
    os_choice: Option<&str>,
    a: &LaunchArgs,
    baked: Option<&ImageInfo>,
    boot_image: Option<&str>,
    needs: LocalNeeds,
) -> Result<Prepared> {
    check_local_needs(ctx, needs)?;
    if let Some(why) = &role.legacy {
        tracing::warn!("role '{}' is legacy: {why}", role.name);
    }
    let cloud = ctx.cloud().await?;
    let ns = ctx.namespace().await?.clone();
    let os = match os_choice {
        Some(id) => role.os.iter().find(|o| o.id == id).cloned().with_context(|| {
            format!(
                "role '{}' does not support OS '{id}' (supported: {})",
                role.name,
                role.os.iter().map(|o| o.id.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?,
        None => role.os[0].clone(),
    };
    let mut given = BTreeMap::new();
    if let Some(img) = baked {
        // Options baked into the image carry over.
        let options =
            img.tags.iter().filter_map(|(k, v)| k.strip_prefix(tags::OPTION_PREFIX).map(|n| (n.to_owned(), v.clone())));
        given.extend(options_from_tags(&role, options, &format!("image {}", img.image_id))?);
    }
    for o in &a.options {
        let (k, v) = role.parse_option(o)?;
        // A box booted from an image runs the plan baked into it: a different value would be
        // recorded on the box but change nothing on it.
        if let Some(img) = baked {
            let default = || role.options.get(&k).and_then(|d| d.default.as_ref()).map(ToString::to_string);
            let was = given.get(&k).cloned().or_else(default);
            if was.as_deref() != Some(v.as_str()) {
                bail!(
                    "option '{k}' is baked into image {} as '{}': -O {k}={v} would not take effect on boxes booted from it; bake an image with it (cgcloud create -I -T {} -O {k}={v})",
                    img.image_id,
                    was.unwrap_or_default(),
                    role.name
                );
            }
        }
        if v.chars().count() > MAX_TAG_VALUE {
            bail!(
                "the value of option '{k}' is {} characters long; boxes record their options in tags, which hold at most {MAX_TAG_VALUE}",
                v.chars().count()
            );
        }
        given.insert(k, v);
    }
    cgcloud_core::limits::check_option_count(given.len()).map_err(anyhow::Error::msg)?;
    // Every name the launch derives from the namespace and role, within AWS's limits.
    let box_roles: Vec<&str> = match &role.cluster {
        Some(c) => vec![c.leader.as_str(), c.worker.as_str()],
        None => vec![role.name.as_str()],
    };
    let option_names: Vec<&str> = role.options.keys().map(String::as_str).collect();
    let names = cgcloud_core::limits::derived(
        &ns,
        &role.name,
        &box_roles,
        None,
        !a.no_agent || !role.iam.is_empty(),
        &option_names,
    )?;
    cgcloud_core::limits::check(&names).map_err(|e| anyhow!("role '{}' in namespace '{ns}': {e}", role.name))?;
    for kp in &role.key_pairs {
        box_key_pair_name(&ns, &role.name, &kp.name)?;
    }
    let instance_type = a
        .instance_type
        .clone()
        .or(ctx.settings.instance_type.clone())
        .or(role.instance.instance_type.clone())
        .unwrap_or_else(|| FALLBACK_INSTANCE_TYPE.to_owned());
    let info = cloud.instance_type_info(&instance_type).await?;
    let arches = info.arches.clone();
    let arch = if arches.iter().any(|a| a == "x86_64") {
        Arch::X86_64
    } else if arches.iter().any(|a| a == "arm64") {
        Arch::Arm64
    } else {
        bail!("instance type '{instance_type}' has no supported architecture (x86_64 or arm64): {}", arches.join(", "));
    };
    if let Some(zone) = &ctx.settings.zone {
        let zones = cloud.zones().await?;
        if !zones.contains(zone) {
            bail!("zone '{zone}' does not exist in region {} (zones: {})", cloud.region, zones.join(", "));
        }
    }
    let (image, generation) = match (baked, boot_image) {
        (Some(img), _) => {
            let found = cloud
                .image_by_id(&img.image_id)
                .await?
                .with_context(|| format!("image {} no longer exists", img.image_id))?;
            (found, img.generation)
        }
        (None, Some(id)) => {
            let found = cloud
                .image_by_id(id)
                .await?
                .with_context(|| format!("image '{id}' does not exist in region {}", cloud.region))?;
            (found, 0)
        }
        (None, None) => (base_image(cloud, &os, arch).await?, 0),
    };
    let patterns = launch_patterns(ctx, a);
    let (key_name, keypair_patterns, authorized_keys) = resolve_keypairs(ctx, cloud, &patterns).await?;
    let joined = keypair_patterns.join(" ");
    if joined.chars().count() > MAX_TAG_VALUE {
        bail!(
            "the key-pair patterns '{joined}' are {} characters long; boxes record them in a tag, which holds at most {MAX_TAG_VALUE}: use fewer patterns, a glob or an @@group",
            joined.chars().count()
        );
    }
    let subnet = a.subnet.clone().or(ctx.settings.subnet.clone());
    let network = cloud.network(subnet.as_deref(), ctx.settings.zone.as_deref()).await?;
    let owner = ctx.me().await.map(str::to_owned).unwrap_or_else(|_| "unknown".into());
    let agent = (!a.no_agent).then(|| {
        let mut accounts = vec![os.admin_user.clone()];
        for acct in role.agent.accounts.iter().chain(role.default_user.iter()) {
            if !accounts.contains(acct) {
                accounts.push(acct.clone());
            }
        }
        let mut flags = Tags::new();
        if a.metrics {
            flags.insert(tags::METRICS.into(), "true".into());
        }
        if let Some(i) = a.agent_interval {
            flags.insert(tags::AGENT_INTERVAL.into(), i.max(5).to_string());
        }
        AgentSetup {
            metrics: a.metrics || role.agent.metrics.unwrap_or(false),
            interval: a.agent_interval.or(role.agent.interval).unwrap_or(300).max(5),
            flags,
            accounts,
            busy_probe: role.agent.busy_probe.clone(),
            idle_cpu_percent: role.agent.idle_cpu_percent,
        }
    });
    if a.autostop.autostop.is_some() && agent.is_none() {
        bail!("--autostop needs the agent (it decides on the box when to stop); leave out --no-agent");
    }
    Ok(Prepared {
        ns,
        role,
        os,
        image,
        type_info: BTreeMap::from([(instance_type.clone(), info)]),
        instance_type,
        network,
        key_name,
        keypair_patterns,
        authorized_keys,
        options: given,
        generation,
        owner,
        agent,
        secrets: Vec::new(),
        autostop: a.autostop.autostop.map(|d| (d.as_secs().max(1), a.autostop.autodown)),
    })
}

/// One RunInstances call's worth of boxes.
pub(crate) struct Group {
    pub count: i32,
    /// Accept fewer boxes (down to this many) when EC2 lacks capacity.
    pub min_count: Option<i32>,
    /// The role name the boxes are listed under (for cluster nodes, the leader or worker name).
    pub box_role: String,
    pub instance_type: String,
    pub extra_tags: Tags,
    /// Run `cgcloud-agent boot` at first boot (cluster nodes configure themselves).
    pub first_boot: bool,
    /// Distinguishes the calls of one launch (idempotency token, messages).
    pub label: String,
    /// On the spot market, with this maximum price (None: up to on-demand).
    pub spot: Option<Option<String>>,
}

impl Group {
    fn single(p: &Prepared) -> Group {
        Group {
            count: 1,
            min_count: None,
            box_role: p.role.name.clone(),
            instance_type: p.instance_type.clone(),
            extra_tags: Tags::new(),
            first_boot: false,
            label: "box".into(),
            spot: None,
        }
    }
}

/// This process, as `HOST:PID:BOOT-ID` (tag `cgcloud:launcher`).
pub(crate) fn launcher_id() -> String {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    format!("{}:{}:{}", read("/proc/sys/kernel/hostname"), std::process::id(), read("/proc/sys/kernel/random/boot_id"))
}

/// Whether the launch process a `cgcloud:launcher` tag names is gone: `Some(true)` if it ran on
/// this machine and does not run any more (or the machine rebooted since), `Some(false)` if it
/// still runs here, `None` if it ran elsewhere (then only its age can tell).
pub(crate) fn launcher_gone(launcher: &str) -> Option<bool> {
    let mut parts = launcher.splitn(3, ':');
    let (host, pid, boot) = (parts.next()?, parts.next()?, parts.next()?);
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    if host != read("/proc/sys/kernel/hostname") {
        return None;
    }
    if boot != read("/proc/sys/kernel/random/boot_id") {
        return Some(true);
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    Some(!String::from_utf8_lossy(argv0).ends_with("cgcloud"))
}

/// The tags of a box of this launch.
fn box_tags(p: &Prepared, g: &Group, txn: &Txn, host_key: Option<&str>) -> Result<Tags> {
    let mut t = Tags::new();
    t.insert(tags::NAME.into(), p.ns.to_aws_name(&g.box_role)?);
    t.insert(tags::NAMESPACE.into(), p.ns.to_string());
    t.insert(tags::ROLE.into(), g.box_role.clone());
    t.insert(tags::OWNER.into(), p.owner.clone());
    t.insert(tags::GENERATION.into(), p.generation.to_string());
    if let Some(k) = host_key {
        t.insert(tags::HOST_KEY.into(), k.to_owned());
    }
    t.insert(tags::LAUNCH.into(), txn.id.clone());
    t.insert(tags::LAUNCH_STATE.into(), tags::LAUNCH_PENDING.into());
    t.insert(tags::LAUNCHER.into(), txn.launcher.clone());
    t.insert(tags::ADMIN_USER.into(), p.os.admin_user.clone());
    t.insert(tags::OS.into(), p.os.id.clone());
    t.insert(tags::KEYPAIRS.into(), p.keypair_patterns.join(" "));
    t.insert(tags::AGENT.into(), p.agent.is_some().to_string());
    if let Some(a) = &p.agent {
        t.extend(a.flags.clone());
    }
    for (k, v) in &p.options {
        t.insert(tags::option_tag(k), v.clone());
    }
    if let Some((secs, terminate)) = p.autostop {
        t.insert(tags::AUTOSTOP.into(), secs.to_string());
        t.insert(tags::AUTOSTOP_ACTION.into(), if terminate { "terminate" } else { "stop" }.into());
    }
    t.extend(g.extra_tags.clone());
    Ok(t)
}

/// Creates the security group and IAM profile (if needed) and launches one box, on the spot
/// market if `spot` says so.
async fn launch(ctx: &Ctx, p: &Prepared, txn: &Txn, spot: &SpotArgs) -> Result<Vec<BoxInfo>> {
    let ids = super::capacity::launch_by_policy(ctx, p, txn, &Group::single(p), 1, 1, spot, "box", |_, _| {}).await?;
    let cloud = ctx.cloud().await?;
    wait_for_state(ctx, cloud, &ids, "running", &format!("box {}", ids.join(", "))).await?;
    let mut boxes: Vec<BoxInfo> =
        cloud.describe_instances(&ids).await?.iter().filter_map(cgcloud_aws::ec2::box_from_instance).collect();
    boxes.sort_by_key(BoxInfo::sort_key);
    Ok(boxes)
}

/// The spot options of a single box, checked (further types exist) and applied (the zone
/// with --spot-auto-zone) before anything is launched.
async fn prepare_spot(ctx: &Ctx, p: &mut Prepared, a: &LaunchArgs) -> Result<SpotArgs> {
    let spot = a.spot.clone();
    super::capacity::spot_zone(ctx, p, &spot).await?;
    super::capacity::check_spot_types(ctx, p, &spot).await?;
    if spot.spot_bid.is_some() && p.autostop.is_some_and(|(_, terminate)| !terminate) {
        ctx.out.note("note: a spot box cannot stop: autostop terminates it (its persistent volume is kept)");
    }
    Ok(spot)
}

/// The device a box's persistent volume is attached at (the agent finds it by volume id on
/// Nitro instances, where it shows as NVMe).
pub(crate) const PERSISTENT_DEVICE: &str = "/dev/sdf";

/// A standalone box's persistent volume, decided before launch.
#[derive(Debug, Clone)]
pub(crate) struct VolumePlan {
    /// The volume's `Name`: the role's AWS name (one volume per role and namespace).
    pub name: String,
    pub size_gb: u32,
    /// The volume, if it exists already (then it is available, in the launch's zone).
    pub existing: Option<cgcloud_aws::ec2::VolumeInfo>,
}

/// Whether the box gets a persistent volume, and which: the role's existing one when `-e` is
/// given, the role declares one, or (`recreate`) one exists; a new one of `-e` GiB (or the
/// role's size) otherwise. Everything that can be wrong with it is found here, before launch:
/// a volume in use by another box, a size that differs from the existing volume's, a zone
/// other than the one asked for. The launch moves to the existing volume's zone if no zone or
/// subnet was asked for.
pub(crate) async fn plan_volume(
    ctx: &Ctx,
    cloud: &Cloud,
    p: &mut Prepared,
    a: &LaunchArgs,
    recreating: bool,
) -> Result<Option<VolumePlan>> {
    let declared = p.role.instance.persistent_volume_gb;
    if a.ebs_volume_size.is_none() && declared.is_none() && !recreating {
        return Ok(None);
    }
    let name = p.ns.to_aws_name(&p.role.name)?;
    let found: Vec<_> = cloud
        .volumes_named(p.ns.as_str(), &name)
        .await?
        .into_iter()
        .filter(|v| v.tags.get(tags::PERSISTENT).map(String::as_str) == Some("true"))
        .collect();
    if found.len() > 1 {
        bail!(
            "{} persistent volumes are named {name} ({}); keep one and delete the others",
            found.len(),
            found.iter().map(|v| v.volume_id.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let existing = found.into_iter().next();
    let size_gb = match (&existing, a.ebs_volume_size, declared) {
        (Some(v), Some(gb), _) if gb != v.size_gb => bail!(
            "the persistent volume {} ({name}) of role {} has {} GiB; -e {gb} would not resize it: leave out -e to use it as it is",
            v.volume_id,
            p.role.name,
            v.size_gb
        ),
        (Some(v), _, _) => v.size_gb,
        (None, Some(gb), _) | (None, None, Some(gb)) => gb,
        (None, None, None) => return Ok(None),
    };
    if let Some(v) = &existing {
        if v.state != "available" || !v.attached_to.is_empty() {
            let users = v.attached_to.join(", ");
            bail!(
                "the persistent volume {} ({name}) of role {} is {}{}; a role's boxes share one persistent volume in a namespace: terminate the box using it first (`cgcloud terminate {} -I {}`)",
                v.volume_id,
                p.role.name,
                v.state,
                if users.is_empty() { String::new() } else { format!(" (attached to {users})") },
                p.role.name,
                if users.is_empty() { "INSTANCE" } else { &users }
            );
        }
        match p.network.zone.as_deref() {
            Some(z) if z == v.zone => {}
            Some(z) if ctx.settings.zone.is_some() || a.subnet.is_some() || ctx.settings.subnet.is_some() => bail!(
                "the persistent volume {} ({name}) of role {} is in zone {}, but this launch is in {z}; launch in {} (-z {})",
                v.volume_id,
                p.role.name,
                v.zone,
                v.zone,
                v.zone
            ),
            _ => p.network = cloud.network(None, Some(&v.zone)).await?,
        }
    }
    Ok(Some(VolumePlan { name, size_gb, existing }))
}

/// Attaches the planned volume to the new box (creating it first if need be, in the box's
/// zone) and records it on the box; returns its id.
async fn attach_volume(
    ctx: &Ctx,
    cloud: &Cloud,
    txn: &Txn,
    p: &Prepared,
    v: &VolumePlan,
    b: &BoxInfo,
) -> Result<String> {
    let id = match &v.existing {
        Some(e) => e.volume_id.clone(),
        None => {
            let zone = b.zone.clone().context("the new box has no availability zone")?;
            let mut t = Tags::new();
            t.insert(tags::NAME.into(), v.name.clone());
            t.insert(tags::NAMESPACE.into(), p.ns.to_string());
            t.insert(tags::ROLE.into(), p.role.name.clone());
            t.insert(tags::PERSISTENT.into(), "true".into());
            t.insert(tags::OWNER.into(), p.owner.clone());
            t.extend(txn.pending_tags());
            let id = cloud.create_volume(&zone, v.size_gb, &t).await?;
            txn.with(|s| s.volume = Some(id.clone()));
            id
        }
    };
    let progress =
        ctx.out.progress(format!("attaching persistent volume {id} ({} GiB) to {}", v.size_gb, b.instance_id));
    wait_volume(cloud, &id, "available", Duration::from_secs(300)).await?;
    cloud.attach_volume(&id, &b.instance_id, PERSISTENT_DEVICE).await?;
    wait_volume(cloud, &id, "in-use", Duration::from_secs(300)).await?;
    let mut t = Tags::new();
    t.insert(tags::PERSISTENT_VOLUME.into(), id.clone());
    t.insert(tags::EBS_VOLUME_SIZE.into(), v.size_gb.to_string());
    cloud.create_tags(std::slice::from_ref(&b.instance_id), &t).await?;
    progress.finish(format!("persistent volume {id} attached to {}", b.instance_id));
    Ok(id)
}

async fn wait_volume(cloud: &Cloud, id: &str, state: &str, timeout: Duration) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let now = cloud.volume(id).await?.with_context(|| format!("volume {id} disappeared"))?;
        if now.state == state {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("volume {id} is still {} after {} s (waiting for {state})", now.state, timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Registers the key pairs the role's boxes make (`[[key_pairs]]`): each public key is read
/// from the box (which may still be making it), checked to be one OpenSSH public key, and
/// imported as `NAME@<role's AWS name>` unless that key pair already holds it; a different key
/// under that name is replaced, since the box's key is the authority. Agents are notified.
async fn publish_key_pairs(ctx: &Ctx, cloud: &Cloud, target: &cgcloud_remote::SshTarget, p: &Prepared) -> Result<()> {
    let mut changed = false;
    for kp in &p.role.key_pairs {
        let name = box_key_pair_name(&p.ns, &p.role.name, &kp.name)?;
        let path = &kp.public_key;
        let script =
            format!("for i in $(seq 1 240); do sudo -n test -s {path} && break; sleep 0.5; done; sudo -n cat {path}");
        let out = target.run_script(&script).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "box {} has no public key {path} for key pair {name}: {}",
                target.address,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // What a box says is checked like any other input: one key line of a known type.
        let key = cgcloud_core::sshkey::PublicKey::parse_file(&text)
            .with_context(|| format!("{path} on the box is not one OpenSSH public key"))?;
        let same = match cloud.key_pair(&name).await? {
            Some(existing) => {
                key.matches_fingerprint(&existing.fingerprint)
                    || existing
                        .public_key
                        .as_deref()
                        .and_then(|k| cgcloud_core::sshkey::PublicKey::parse_line(k).ok())
                        .is_some_and(|k| k.blob == key.blob)
            }
            None => false,
        };
        if same {
            continue;
        }
        if cloud.key_pair(&name).await?.is_some() {
            cloud.delete_key_pair(&name).await?;
        }
        let mut t = Tags::new();
        t.insert(tags::NAMESPACE.into(), p.ns.to_string());
        t.insert(tags::ROLE.into(), p.role.name.clone());
        cloud.import_key_pair(&name, &key.to_openssh(), &t).await?;
        ctx.out.note(format!("registered key pair {name} ({}) from {path}", key.ec2_fingerprint()));
        changed = true;
    }
    if changed {
        super::keys::notify(ctx).await;
    }
    Ok(())
}

/// The EC2 key pair a role's boxes register for key `key` (`[[key_pairs]]`), e.g.
/// `jenkins@hannes_jenkins-master`.
pub(crate) fn box_key_pair_name(ns: &Namespace, role: &str, key: &str) -> Result<String> {
    let name = format!("{key}@{}", ns.to_aws_name(role)?);
    cgcloud_core::limits::check_key_pair(&name).map_err(anyhow::Error::msg)?;
    Ok(name)
}

/// A role's security group and instance profile, as [`ensure_role_security`] left them.
pub(crate) struct RoleSecurity {
    pub group_id: String,
    pub group_created: bool,
    /// None when the role's boxes need no IAM permissions.
    pub profile: Option<String>,
    pub profile_created: bool,
}

/// Creates (or brings up to date) the role's security group in `vpc_id` and, if its boxes need
/// any permissions, its IAM role and instance profile. Shared by launches and by
/// `register-agents`, whose templates launch boxes of a role with both.
pub(crate) async fn ensure_role_security(
    cloud: &Cloud,
    ns: &Namespace,
    role: &Role,
    vpc_id: &str,
    agent: bool,
    launch: Option<&Txn>,
) -> Result<RoleSecurity> {
    let name = ns.to_aws_name(&role.name)?;
    // First: a policy that is refused leaves no security group behind.
    let policy = iam_policy(ns, role, agent)?;
    let mut t = Tags::new();
    t.insert(tags::NAMESPACE.into(), ns.to_string());
    t.insert(tags::ROLE.into(), role.name.clone());
    let (group_id, group_created) = cloud
        .ensure_security_group(
            &name,
            &format!("cgcloud: boxes of role {} in namespace {}", role.name, ns),
            vpc_id,
            &t,
            &sg_rules(role),
        )
        .await?;
    let (profile, profile_created) = if policy.statements.is_empty() {
        (None, false)
    } else {
        if name.len() > MAX_IAM_NAME {
            bail!(
                "the IAM role of role '{}' in namespace '{ns}' would be named '{name}' ({} characters, IAM allows {MAX_IAM_NAME}); use a shorter namespace or role name",
                role.name,
                name.len()
            );
        }
        // A role made by a launch is marked as the launch's until it completes.
        let mut iam_tags = t.clone();
        if let Some(txn) = launch {
            iam_tags.extend(txn.pending_tags());
        }
        let created =
            cloud.ensure_instance_profile(&name, &ns.iam_path(), &policy.to_json().to_string(), &iam_tags).await?;
        (Some(name.clone()), created)
    };
    Ok(RoleSecurity { group_id, group_created, profile, profile_created })
}

/// Creates the security group and IAM profile (if needed) and launches a group of boxes with
/// one RunInstances call; returns their ids.
pub(crate) async fn launch_group(ctx: &Ctx, p: &Prepared, txn: &Txn, g: &Group) -> Result<Vec<String>> {
    let cloud = ctx.cloud().await?;
    // Everything that can fail without creating anything comes first.
    let instance_store = match p.type_info.get(&g.instance_type) {
        Some(info) => info.mapped_instance_store(),
        None => cloud.instance_type_info(&g.instance_type).await?.mapped_instance_store(),
    };
    // The boxes of one call share their user data, so a host key there would be shared too:
    // nodes that configure themselves make their own and publish it (the agent's `boot`); a box
    // provisioned over SSH gets one here, so that the first connection can be verified.
    let host_key = if g.first_boot { None } else { Some(cgcloud_remote::hostkey::generate()?) };
    let boot_cluster = g.first_boot.then(|| g.extra_tags.get(tags::CLUSTER).map(String::as_str).unwrap_or_default());
    let user_data = cloud_config(host_key.as_ref(), &p.authorized_keys, boot_cluster, &instance_store, &p.secrets);
    if user_data.len() > MAX_USER_DATA {
        bail!(
            "the boxes' user data would be {} bytes, over EC2's limit of {MAX_USER_DATA} ({} extra authorized keys); \
             name fewer key pairs with -k",
            user_data.len(),
            p.authorized_keys.len()
        );
    }
    let mut box_tags = box_tags(p, g, txn, host_key.as_ref().map(|k| k.public.as_str()))?;
    let client_token = format!("{}-{}", txn.id, g.label);
    box_tags.insert(tags::LAUNCH_CALL.into(), client_token.clone());
    let security = ensure_role_security(cloud, &p.ns, &p.role, &p.network.vpc_id, p.agent.is_some(), Some(txn)).await?;
    if security.group_created {
        txn.with(|s| s.security_group = Some(security.group_id.clone()));
    }
    if security.profile_created {
        txn.with(|s| s.instance_profile = security.profile.clone());
    }
    let (sg_id, profile) = (security.group_id, security.profile);
    let count = g.count;
    let spec = LaunchSpec {
        image_id: p.image.image_id.clone(),
        instance_type: g.instance_type.clone(),
        count,
        min_count: g.min_count,
        key_name: Some(p.key_name.clone()),
        security_group_ids: vec![sg_id],
        subnet_id: p.network.subnet_id.clone(),
        zone: p.network.zone.clone(),
        user_data,
        instance_profile: profile,
        root_volume: p.image.root_device.clone().map(|d| (d, p.role.instance.root_volume_gb.unwrap_or(10) as i32)),
        tags: box_tags,
        client_token: Some(client_token),
        spot: g.spot.clone(),
        instance_store_devices: instance_store,
    };
    let progress =
        ctx.out.progress(format!("launching {count} × {} ({}) from {}", g.box_role, g.instance_type, p.image.image_id));
    let retries = cloud.retries_sent();
    let instances = cloud.run_instances(&spec).await?;
    let ids: Vec<String> = instances.iter().filter_map(|i| i.instance_id().map(str::to_owned)).collect();
    txn.with(|s| s.instances.extend(ids.iter().cloned()));
    if cloud.retries_sent() > retries {
        // A retried call (its first answer lost) may have launched twice where the endpoint
        // does not honour the client token: the call's tag finds the extra ones.
        let token = spec.client_token.clone().unwrap_or_default();
        let extra: Vec<String> = cloud
            .boxes_with_tag(p.ns.as_str(), tags::LAUNCH_CALL, &token)
            .await?
            .into_iter()
            .map(|b| b.instance_id)
            .filter(|i| !ids.contains(i))
            .collect();
        if !extra.is_empty() {
            tracing::warn!(
                "RunInstances was retried and launched {} instance(s) twice ({}); terminating the copies",
                extra.len(),
                extra.join(", ")
            );
            txn.with(|s| s.instances.extend(extra.iter().cloned()));
            cloud.terminate(&extra).await?;
        }
    }
    let shown = if ids.len() > 4 { format!("{} boxes", ids.len()) } else { ids.join(", ") };
    progress.finish(format!("launched {shown}"));
    Ok(ids)
}

/// Undoes a failed launch: terminates its boxes and removes what it created for them. What is
/// done is taken off the launch's state as it goes, so that a second Ctrl-C can say what is
/// left.
async fn rollback(ctx: &Ctx, txn: &Txn) {
    let state = txn.with(|s| TxnState {
        instances: s.instances.clone(),
        security_group: s.security_group.clone(),
        instance_profile: s.instance_profile.clone(),
        volume: s.volume.clone(),
        terminating: s.terminating,
    });
    let Ok(cloud) = ctx.cloud().await else { return };
    // The launch's tag finds what an interrupted RunInstances made before it answered.
    let mut state = state;
    if let Ok(ns) = ctx.namespace().await {
        match cloud.boxes_with_tag(ns.as_str(), tags::LAUNCH, &txn.id).await {
            Ok(found) => {
                for b in found {
                    if !state.instances.contains(&b.instance_id) {
                        state.instances.push(b.instance_id.clone());
                        txn.with(|s| s.instances.push(b.instance_id));
                    }
                }
            }
            Err(e) => tracing::warn!("could not look for the launch's instances by tag: {e}"),
        }
    }
    if !state.instances.is_empty() {
        ctx.out.note(format!("rolling back: terminating {}", state.instances.join(", ")));
        if let Err(e) = cloud.terminate(&state.instances).await {
            tracing::error!(
                "could not terminate {}: {e}; run `cgcloud cleanup` to find them",
                state.instances.join(", ")
            );
            return;
        }
        txn.with(|s| s.terminating = true);
        let _ = super::boxes::forget(ctx, &state.instances).await;
    }
    if state.security_group.is_none() && state.instance_profile.is_none() && state.volume.is_none() {
        txn.with(|s| s.instances.clear());
        return;
    }
    // A security group (or volume) can only go once no instance uses it.
    if !state.instances.is_empty() {
        if let Err(e) = wait_for_state(ctx, cloud, &state.instances, "terminated", "rolled-back boxes").await {
            tracing::warn!("{e}; `cgcloud cleanup` removes the rest later");
            return;
        }
        txn.with(|s| s.instances.clear());
    }
    if let Some(vol) = &state.volume {
        // A volume this launch made holds nothing yet; it detaches once its box is gone.
        let gone = async {
            wait_volume(cloud, vol, "available", Duration::from_secs(120)).await?;
            cloud.delete_volume(vol).await.map_err(anyhow::Error::from)
        };
        match gone.await {
            Ok(()) => txn.with(|s| s.volume = None),
            Err(e) => tracing::warn!("could not delete the new persistent volume {vol}: {e:#}; delete it by hand"),
        }
    }
    if let Some(sg) = &state.security_group {
        match cloud.delete_security_group(sg).await {
            Ok(()) => txn.with(|s| s.security_group = None),
            Err(e) => tracing::warn!("could not delete security group {sg}: {e}; `cgcloud cleanup` removes it later"),
        }
    }
    if let Some(profile) = &state.instance_profile {
        let res = async {
            cloud.delete_instance_profile(profile).await?;
            cloud.delete_role(profile).await
        }
        .await;
        match res {
            Ok(()) => txn.with(|s| s.instance_profile = None),
            Err(e) => {
                tracing::warn!("could not delete IAM role/profile {profile}: {e}; `cgcloud reset-security` removes it")
            }
        }
    }
}

/// What an interrupted rollback leaves, and the command that removes it.
fn leftovers(txn: &Txn, ns: &str) -> String {
    txn.with(|s| {
        let mut left = Vec::new();
        if !s.instances.is_empty() {
            let how = if s.terminating { " (terminating)" } else { "" };
            left.push(format!("instance(s) {}{how}", s.instances.join(", ")));
        }
        if let Some(sg) = &s.security_group {
            left.push(format!("security group {sg}"));
        }
        if let Some(v) = &s.volume {
            left.push(format!("new persistent volume {v}"));
        }
        let mut fix = format!("cgcloud -n {ns} cleanup --min-age 0 --yes");
        if s.volume.is_some() {
            fix.push_str(" --persistent-volumes");
        }
        let mut text = if left.is_empty() {
            "nothing of the launch is left".to_owned()
        } else {
            format!("left behind: {}; remove it with `{fix}` (run it again if a group is still in use)", left.join(", "))
        };
        if let Some(p) = &s.instance_profile {
            text.push_str(&format!(
                "; IAM role {p} stays (the role's next launch uses it; `cgcloud -n {ns} reset-security` removes the namespace's)"
            ));
        }
        text
    })
}
/// Marks the launch complete on its boxes, and on the IAM role and volume it made.
pub(crate) async fn finish_launch(cloud: &Cloud, txn: &Txn, ids: &[String]) -> Result<()> {
    let (profile, volume) = txn.with(|s| (s.instance_profile.clone(), s.volume.clone()));
    let mut resources = ids.to_vec();
    resources.extend(volume);
    cloud.delete_tags(&resources, &[tags::LAUNCH_STATE]).await?;
    if let Some(p) = profile {
        cloud.untag_role_and_profile(&p, tags::LAUNCH_STATE).await?;
    }
    Ok(())
}

/// Runs `work` as a transaction: on error or Ctrl-C the launch is rolled back, unless `keep`.
pub(crate) async fn transaction<T>(
    ctx: &Ctx,
    txn: &Txn,
    keep: bool,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let result = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    if let Err(e) = &result {
        let ids = txn.with(|s| s.instances.clone());
        if keep {
            if !ids.is_empty() {
                if let Ok(cloud) = ctx.cloud().await {
                    let mut t = Tags::new();
                    t.insert(tags::LAUNCH_STATE.into(), "failed".into());
                    let _ = cloud.create_tags(&ids, &t).await;
                }
                ctx.out.note(format!("keeping {} for debugging (--never-terminate)", ids.join(", ")));
            }
        } else {
            tracing::debug!("launch failed: {e:#}");
            // A second Ctrl-C stops the rollback, saying what is left and how to remove it.
            tokio::select! {
                _ = rollback(ctx, txn) => {}
                _ = tokio::signal::ctrl_c() => {
                    let ns = ctx.namespace().await.map(|n| n.to_string()).unwrap_or_else(|_| ctx.settings.namespace.clone());
                    let what = leftovers(txn, &ns);
                    if crate::output::json_errors() {
                        eprintln!("{}", crate::output::error_json("interrupted", &format!("interrupted twice; the rollback stopped: {what}"), None));
                    } else {
                        eprintln!("error: interrupted twice; the rollback stopped: {what}");
                    }
                    std::process::exit(130);
                }
            }
        }
    }
    result
}

/// Waits for SSH on a fresh box and returns the refreshed box and its target.
async fn wait_ssh(ctx: &Ctx, b: &BoxInfo, a: &LaunchArgs) -> Result<cgcloud_remote::SshTarget> {
    let mut target = ctx.ssh_target(b, None, a.ssh_address).await?;
    // Provisioning always runs as the admin user.
    target.user = b.admin_user.clone().unwrap_or(target.user);
    let progress = ctx.out.progress(format!("waiting for SSH on {} ({})", b.instance_id, target.address));
    let cloud = ctx.cloud().await?;
    // A box that dies while we wait (e.g. its image cannot boot) fails the wait at once.
    let watch = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let states = cloud.instance_states(std::slice::from_ref(&b.instance_id)).await?;
            if let Some((state, reason)) = states.get(&b.instance_id) {
                if state != "running" {
                    return Err::<(), _>(anyhow!(
                        "box {} is {state} instead of running{}",
                        b.instance_id,
                        reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
                    ));
                }
            }
        }
    };
    tokio::select! {
        r = target.wait_ready(Duration::from_secs(a.ssh_timeout)) => match r {
            Err(e @ cgcloud_remote::RemoteError::KeysRefused { .. }) => {
                let names: Vec<String> = b
                    .tags
                    .get(tags::KEYPAIRS)
                    .map(|k| k.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default();
                let why = crate::commands::doctor::explain_refused_keys(ctx, &names).await;
                bail!("{e}\n{why}\nload the matching private key into ssh-agent or name it with CGCLOUD_SSH_OPTS=\"-i PATH\", or launch with -k naming a key pair of yours (`cgcloud doctor` checks the default one)");
            }
            r => r?,
        },
        e = watch => e?,
    }
    progress.finish(format!("SSH is up on {}", b.instance_id));
    Ok(target)
}

/// Replaces the host key a box got in its user data, which stays readable there (through IMDS,
/// by any local user) for the box's life, with one the box generates and only root can read.
/// The first connection was verified with the old key; the new public key comes back over it,
/// is recorded (tag and known_hosts), and a fresh connection must verify with it.
async fn rotate_host_key(ctx: &Ctx, cloud: &Cloud, target: &cgcloud_remote::SshTarget, b: &BoxInfo) -> Result<()> {
    const KEY: &str = "/etc/ssh/ssh_host_ed25519_key";
    let script = format!(
        "set -e\n\
         sudo rm -f {KEY}.cgcloud-new {KEY}.cgcloud-new.pub\n\
         sudo ssh-keygen -q -t ed25519 -N '' -C '' -f {KEY}.cgcloud-new\n\
         sudo mv -f {KEY}.cgcloud-new.pub {KEY}.pub\n\
         sudo mv -f {KEY}.cgcloud-new {KEY}\n\
         for unit in ssh.service sshd.service; do\n\
           if systemctl is-active --quiet $unit; then sudo systemctl reload $unit; fi\n\
         done\n\
         cat {KEY}.pub\n"
    );
    let out = target.run_script(&script).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let key: Vec<&str> = text.split_whitespace().take(2).collect();
    if !out.status.success() || key.len() != 2 || key[0] != "ssh-ed25519" {
        bail!(
            "could not replace the SSH host key of box {} from its user data: {}",
            b.instance_id,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let key = key.join(" ");
    let mut t = Tags::new();
    t.insert(tags::HOST_KEY.into(), key.clone());
    cloud.create_tags(std::slice::from_ref(&b.instance_id), &t).await?;
    cgcloud_remote::hostkey::record(&ctx.settings.known_hosts(), &b.instance_id, &key)?;
    target.close().await;
    target
        .wait_ready(Duration::from_secs(60))
        .await
        .with_context(|| format!("box {} does not present its new SSH host key", b.instance_id))?;
    tracing::debug!("box {} has its own SSH host key now", b.instance_id);
    Ok(())
}

pub async fn create(ctx: &Ctx, a: CreateArgs) -> Result<ExitCode> {
    let role = ctx.registry().await?.role(&a.role)?;
    // Without -Q the launch waits for SSH and provisions with the agent.
    let needs = LocalNeeds { ssh: !a.quick, agent: !a.quick, rsync: false };
    if a.create_image && a.launch.spot.spot_bid.is_some() {
        bail!("-I bakes the box after stopping it, and a spot box cannot stop: bake from an on-demand box (leave out --spot-bid)");
    }
    let mut prepared = prepare(ctx, role, a.os.as_deref(), &a.launch, None, a.boot_image.as_deref(), needs).await?;
    let cloud = ctx.cloud().await?;
    let spot = prepare_spot(ctx, &mut prepared, &a.launch).await?;
    let volume = plan_volume(ctx, cloud, &mut prepared, &a.launch, false).await?;
    if a.quick && !prepared.role.key_pairs.is_empty() {
        tracing::warn!(
            "-Q: role '{}' registers key pairs its boxes make once they are provisioned; this box is not",
            prepared.role.name
        );
    }
    // Compile before launching anything, so a broken role costs no instance.
    let plan = compile(&prepared.role, &prepared.os, &prepared.options)?;
    let txn = Txn::new();
    let work = async {
        let boxes = launch(ctx, &prepared, &txn, &spot).await?;
        let b = boxes.into_iter().next().context("RunInstances returned no instance")?;
        let volume_id = match &volume {
            Some(v) => Some(attach_volume(ctx, cloud, &txn, &prepared, v, &b).await?),
            None => None,
        };
        if a.quick {
            finish_launch(cloud, &txn, std::slice::from_ref(&b.instance_id)).await?;
            return Ok((b, None));
        }
        let target = wait_ssh(ctx, &b, &a.launch).await?;
        if let (Some(id), Some(v)) = (&volume_id, &volume) {
            // Mounted before the plan runs, so that the role's steps can keep data there.
            super::provision::mount_volume(ctx, &target, id, &v.name).await?;
        }
        // The agent's steps depend on the launch, not the role: they are not in the plan hash.
        let mut full = plan.clone();
        full.steps.extend(agent_steps(ctx, &prepared, &cloud.region));
        provision(ctx, &target, &b, &full, a.upgrade).await?;
        rotate_host_key(ctx, cloud, &target, &b).await?;
        record_plan(cloud, &b.instance_id, &plan).await?;
        publish_key_pairs(ctx, cloud, &target, &prepared).await?;
        finish_launch(cloud, &txn, std::slice::from_ref(&b.instance_id)).await?;
        target.close().await;
        let baked = if a.create_image {
            let image = bake_image(ctx, cloud, &b, &prepared.ns, !a.launch.terminate).await?;
            ctx.out.note(format!("baked image {image}"));
            Some(image)
        } else {
            None
        };
        Ok((b, baked))
    };
    let (b, baked) = transaction(ctx, &txn, a.launch.never_terminate, work).await?;
    finish(ctx, cloud, &b, &a.launch, Some(baked)).await
}

/// Prints the new box (`create` also says which image it baked: `baked`, None for
/// `recreate`), after terminating it with `-T`.
async fn finish(
    ctx: &Ctx,
    cloud: &Cloud,
    b: &BoxInfo,
    a: &LaunchArgs,
    baked: Option<Option<String>>,
) -> Result<ExitCode> {
    if a.terminate {
        cloud.terminate(std::slice::from_ref(&b.instance_id)).await?;
        super::boxes::forget(ctx, std::slice::from_ref(&b.instance_id)).await?;
        ctx.out.note(format!("terminated {} (--terminate)", b.instance_id));
    }
    let fresh = cloud
        .describe_instances(std::slice::from_ref(&b.instance_id))
        .await?
        .iter()
        .find_map(cgcloud_aws::ec2::box_from_instance)
        .unwrap_or_else(|| b.clone());
    if a.list {
        super::boxes::print_rows(&ctx.out, std::slice::from_ref(&fresh));
    } else if let Some(baked) = baked {
        let mut v = serde_json::to_value(&fresh)?;
        v["baked_image"] = serde_json::json!(baked);
        ctx.out.record(&v, || match &baked {
            Some(id) => format!("{}\n{:<18}{id}", super::boxes::box_text(&fresh), "baked_image"),
            None => super::boxes::box_text(&fresh),
        });
    } else {
        print_box(&ctx.out, &fresh);
    }
    if a.terminate {
        return Ok(ExitCode::SUCCESS);
    }
    let ns = ctx.namespace().await?;
    let mut hint = format!("run 'cgcloud ssh {}", fresh.role);
    if ns.as_str() != ctx.settings.namespace && ctx.settings.namespace != cgcloud_core::namespace::DEFAULT_NAMESPACE {
        hint.push_str(&format!(" -n {ns}"));
    }
    hint.push_str(&format!(" -I {}' to log in", fresh.instance_id));
    ctx.out.note(hint);
    Ok(ExitCode::SUCCESS)
}

pub async fn recreate(ctx: &Ctx, a: RecreateArgs) -> Result<ExitCode> {
    let role = ctx.registry().await?.role(&a.role)?;
    let ns = ctx.namespace().await?.clone();
    let cloud = ctx.cloud().await?;
    let images = cloud.list_images(ns.as_str(), Some(&role.name)).await?;
    let image = pick_image(&role.name, ns.as_str(), images, &a.boot_image)?;
    let needs = LocalNeeds { ssh: !a.quick, ..Default::default() };
    let mut prepared =
        prepare(ctx, role, image.tags.get(tags::OS).map(String::as_str), &a.launch, Some(&image), None, needs).await?;
    let spot = prepare_spot(ctx, &mut prepared, &a.launch).await?;
    let volume = plan_volume(ctx, cloud, &mut prepared, &a.launch, true).await?;
    if volume.is_some() && !a.quick {
        // The volume is formatted (if new) and mounted with the agent, uploaded if it differs.
        check_local_needs(ctx, LocalNeeds { agent: true, ..Default::default() })?;
    }
    warn_if_role_changed(&prepared, &image);
    let txn = Txn::new();
    let work = async {
        let boxes = launch(ctx, &prepared, &txn, &spot).await?;
        let b = boxes.into_iter().next().context("RunInstances returned no instance")?;
        let volume_id = match &volume {
            Some(v) => Some(attach_volume(ctx, cloud, &txn, &prepared, v, &b).await?),
            None => None,
        };
        if !a.quick {
            let target = wait_ssh(ctx, &b, &a.launch).await?;
            if let (Some(id), Some(v)) = (&volume_id, &volume) {
                super::provision::mount_volume(ctx, &target, id, &v.name).await?;
            }
            rotate_host_key(ctx, cloud, &target, &b).await?;
            publish_key_pairs(ctx, cloud, &target, &prepared).await?;
            target.close().await;
        }
        finish_launch(cloud, &txn, std::slice::from_ref(&b.instance_id)).await?;
        Ok(b)
    };
    let b = transaction(ctx, &txn, a.launch.never_terminate, work).await?;
    finish(ctx, cloud, &b, &a.launch, None).await
}

pub async fn provision_existing(ctx: &Ctx, a: SelectArgs) -> Result<ExitCode> {
    let b = ctx.select(&a.role, &a.selection).await?;
    let role = ctx.registry().await?.box_role(&b.role)?;
    let os_id = b.tags.get(tags::OS).cloned().unwrap_or_default();
    let os = role.os.iter().find(|o| o.id == os_id).unwrap_or(&role.os[0]).clone();
    let options = options_from_tags(&role, b.options.clone(), &format!("box {}", b.instance_id))?;
    let plan = compile(&role, &os, &options)?;
    let mut target = ctx.ssh_target(&b, None, None).await?;
    target.user = b.admin_user.clone().unwrap_or(target.user);
    target.wait_ready(Duration::from_secs(120)).await?;
    let summary = provision(ctx, &target, &b, &plan, false).await?;
    record_plan(ctx.cloud().await?, &b.instance_id, &plan).await?;
    target.close().await;
    ctx.out.record(&summary, || {
        format!("{}\t{} changed\t{} unchanged", summary.instance_id, summary.changed, summary.unchanged)
    });
    Ok(ExitCode::SUCCESS)
}

/// Records which plan a box was provisioned with (images inherit it).
async fn record_plan(cloud: &Cloud, id: &str, plan: &cgcloud_core::plan::Plan) -> Result<()> {
    let mut t = Tags::new();
    t.insert(tags::ROLE_HASH.into(), plan.hash());
    cloud.create_tags(&[id.to_owned()], &t).await?;
    Ok(())
}

/// Warns when the role's plan today differs from the one the image was baked with.
fn warn_if_role_changed(p: &Prepared, image: &ImageInfo) {
    let Some(baked) = &image.role_hash else { return };
    match compile(&p.role, &p.os, &p.options) {
        Ok(plan) if &plan.hash() != baked => tracing::warn!(
            "role '{}' changed since image {} was baked (plan {} then, {} now); run `cgcloud create -I {}` to bake a current image",
            p.role.name,
            image.image_id,
            baked,
            plan.hash(),
            p.role.name
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot compile role '{}' to compare it with image {}: {e}", p.role.name, image.image_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_rollback_names_what_is_left_and_the_command() {
        let txn = Txn::new();
        assert_eq!(leftovers(&txn, "/team/"), "nothing of the launch is left");
        txn.with(|s| {
            s.instances = vec!["i-1".into(), "i-2".into()];
            s.terminating = true;
            s.security_group = Some("sg-1".into());
            s.volume = Some("vol-1".into());
            s.instance_profile = Some("team_r".into());
        });
        let text = leftovers(&txn, "/team/");
        assert!(text.contains("instance(s) i-1, i-2 (terminating)") && text.contains("security group sg-1"), "{text}");
        assert!(text.contains("`cgcloud -n /team/ cleanup --min-age 0 --yes --persistent-volumes`"), "{text}");
        assert!(text.contains("IAM role team_r stays"), "{text}");
    }
}
