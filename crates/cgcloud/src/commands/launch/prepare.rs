//! Before a launch creates anything: the role, OS, image, instance type, key pairs, network
//! and options resolved and checked, and what this machine needs (ssh, the agent) found.

use super::*;

/// The instance type used when neither the user nor the role names one.
pub(super) const FALLBACK_INSTANCE_TYPE: &str = "t3.micro";

/// EC2's limit on a tag value, in characters.
pub(super) const MAX_TAG_VALUE: usize = 256;

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
        crate::commands::provision::check_agent(ctx)?;
    }
    Ok(())
}

/// Everything decided before the first resource is created.
pub(crate) struct Prepared {
    pub(crate) ns: Namespace,
    pub(crate) role: Role,
    pub(crate) os: OsDef,
    pub(crate) image: FoundImage,
    pub(crate) instance_type: String,
    /// What DescribeInstanceTypes said of the instance types used so far.
    pub(crate) type_info: BTreeMap<String, InstanceTypeInfo>,
    pub(crate) network: Network,
    pub(crate) key_name: String,
    pub(crate) keypair_patterns: Vec<String>,
    pub(crate) authorized_keys: Vec<String>,
    pub(crate) options: BTreeMap<String, String>,
    pub(crate) generation: u32,
    pub(crate) owner: String,
    /// The agent's settings, unless --no-agent.
    pub(crate) agent: Option<AgentSetup>,
    /// Files written at first boot: a cluster's secrets (`[[cluster.secrets]]`).
    pub(crate) secrets: Vec<cgcloud_core::userdata::SecretFile>,
    /// Autostop: idle seconds, and whether to terminate rather than stop.
    pub(crate) autostop: Option<(u64, bool)>,
}

pub(super) fn launch_patterns(ctx: &Ctx, a: &LaunchArgs) -> Vec<String> {
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
pub(super) async fn resolve_keypairs(
    ctx: &Ctx,
    cloud: &Cloud,
    patterns: &[String],
) -> Result<(String, Vec<String>, Vec<String>)> {
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
pub(super) async fn base_image(cloud: &Cloud, os: &OsDef, arch: Arch) -> Result<FoundImage> {
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
    let given = launch_options(&role, a, baked)?;
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
    let arch = arch_of(&instance_type, &info.arches)?;
    if let Some(zone) = &ctx.settings.zone {
        let zones = cloud.zones().await?;
        if !zones.contains(zone) {
            bail!("zone '{zone}' does not exist in region {} (zones: {})", cloud.region, zones.join(", "));
        }
    }
    let (image, generation) = launch_image(cloud, &os, arch, baked, boot_image).await?;
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
    let agent = (!a.no_agent).then(|| agent_setup(&role, &os, a));
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

/// The options of a launch: those baked into the image, then `-O`. A box booted from an image
/// runs the plan baked into it, so `-O` may not change a baked value.
fn launch_options(role: &Role, a: &LaunchArgs, baked: Option<&ImageInfo>) -> Result<BTreeMap<String, String>> {
    let mut given = BTreeMap::new();
    if let Some(img) = baked {
        // Options baked into the image carry over.
        let options =
            img.tags.iter().filter_map(|(k, v)| k.strip_prefix(tags::OPTION_PREFIX).map(|n| (n.to_owned(), v.clone())));
        given.extend(options_from_tags(role, options, &format!("image {}", img.image_id))?);
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
    Ok(given)
}

/// The architecture of an instance type's images.
fn arch_of(instance_type: &str, arches: &[String]) -> Result<Arch> {
    if arches.iter().any(|a| a == "x86_64") {
        Ok(Arch::X86_64)
    } else if arches.iter().any(|a| a == "arm64") {
        Ok(Arch::Arm64)
    } else {
        bail!("instance type '{instance_type}' has no supported architecture (x86_64 or arm64): {}", arches.join(", "));
    }
}

/// The image a launch boots and the generation it starts: a baked image, `--boot-image`, or
/// the OS's newest stock image.
async fn launch_image(
    cloud: &Cloud,
    os: &OsDef,
    arch: Arch,
    baked: Option<&ImageInfo>,
    boot_image: Option<&str>,
) -> Result<(FoundImage, u32)> {
    Ok(match (baked, boot_image) {
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
        (None, None) => (base_image(cloud, os, arch).await?, 0),
    })
}

/// The agent's settings for a box of `role`: the accounts it keeps keys for, metrics, the key
/// refresh interval, and autostop's probe.
fn agent_setup(role: &Role, os: &OsDef, a: &LaunchArgs) -> AgentSetup {
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
        scaling: role.cluster.as_ref().and_then(|c| c.scaling.as_ref()).map(|s| {
            serde_json::json!({
                "node_prefix": s.node_prefix,
                "socket_group": s.socket_group,
                "resume_timeout": s.resume_timeout.as_secs(),
                "on_bounds": s.on_bounds,
                "on_failed": s.on_failed,
                "on_vanished": s.on_vanished,
            })
        }),
    }
}
