//! `register-agents`: writes one Jenkins EC2-plugin template per agent role into a master's
//! configuration as code and has Jenkins reload it (the original's `register-slaves`, which
//! edited config.xml). The templates name no AMI: the plugin launches the newest image of the
//! role it finds by tag, so baking a new agent image needs no edit of the master. The file is
//! made whole from the roles each time, so running it again changes nothing, and a role left
//! out loses its template.

use super::launch::{box_key_pair_name, ensure_role_security};
use super::provision::run_with_input;
use crate::cli::RegisterAgentsArgs;
use crate::context::Ctx;
use anyhow::{anyhow, bail, Context as _, Result};
use cgcloud_core::glob::Glob;
use cgcloud_core::jenkins::{casc, casc_yaml, Cloud as JenkinsCloud, Template};
use cgcloud_core::model::{BoxInfo, ImageInfo};
use cgcloud_core::tags::{self, Tags};
use cgcloud_core::Namespace;
use cgcloud_roles::role::Role;
use std::process::ExitCode;

/// Where the master's role keeps the agents file, and the script that installs it.
const AGENTS_FILE: &str = "/etc/jenkins/casc/agents.yaml";
/// What agent roles' names start with (the jenkins-master role's IAM statements name them so).
const AGENT_ROLE_PREFIX: &str = "jenkins-agent-";
const INSTALL: &str = "/usr/local/sbin/cgcloud-jenkins-agents";

pub async fn register_agents(ctx: &Ctx, a: RegisterAgentsArgs) -> Result<ExitCode> {
    if let Some(p) = a.spot_bid {
        if !(p > 0.0 && p < 1000.0) {
            bail!("--spot-bid {p}: give a price in dollars per hour, e.g. 0.05");
        }
    }
    let registry = ctx.registry().await?;
    let ns = ctx.namespace().await?.clone();
    let cloud = ctx.cloud().await?;
    // Everything is resolved and checked before the master is touched.
    let master = ctx.select(&a.master, &a.selection).await?;
    let master_role = registry.box_role(&master.role)?;
    let Some(key) = master_role.key_pairs.first() else {
        bail!("role '{}' registers no key pair for agents ([[key_pairs]]); is it a Jenkins master?", master_role.name);
    };
    let key_pair = box_key_pair_name(&ns, &master_role.name, &key.name)?;
    if cloud.key_pair(&key_pair).await?.is_none() {
        bail!(
            "key pair {key_pair} does not exist: the master registers it when it is created or recreated \
             (`cgcloud recreate {}`)",
            master_role.name
        );
    }
    let keypairs = agent_key_patterns(ctx, &a, &master, &key_pair).await?;

    let chosen = choose_agent_roles(ctx, &a, &ns).await?;
    let instances = cloud.describe_instances(std::slice::from_ref(&master.instance_id)).await?;
    let inst = instances.first().context("the master disappeared")?;
    let vpc_id = inst.vpc_id.clone().context("the master is in no VPC")?;
    let subnet_id = inst.subnet_id.clone();

    let shared = Shared { ns: &ns, vpc_id, subnet_id, key_pair: &key_pair, keypairs };
    let mut templates = Vec::new();
    for (role, image, instance_type) in &chosen {
        templates.push(template(ctx, &a, &shared, role, image, instance_type).await?);
    }
    let jcloud = JenkinsCloud {
        // Jenkins puts a cloud's name in URLs and refuses '/' in names: `cgcloud-hannes`.
        name: cloud_name(&ns),
        region: cloud.region.clone(),
        endpoint: ctx.settings.agent.endpoint.clone(),
    };
    let yaml = casc_yaml(&jcloud, &templates);
    let rows: Vec<Vec<String>> = chosen
        .iter()
        .zip(&templates)
        .map(|((role, image, _), t)| {
            vec![
                role.name.clone(),
                image.image_id.clone(),
                t.instance_type.clone(),
                t.labels.join(" "),
                t.instance_cap.to_string(),
                match &t.spot {
                    None => "on-demand".into(),
                    Some(None) => "spot".into(),
                    Some(Some(p)) => format!("spot ≤ ${p}/h"),
                },
            ]
        })
        .collect();
    let action = if a.dry_run { "dry-run".to_owned() } else { install(ctx, &master, &yaml).await? };
    let json = serde_json::json!({
        "master": master.instance_id,
        "file": AGENTS_FILE,
        "action": action,
        "key_pair": key_pair,
        "templates": chosen.iter().zip(&templates).map(|((role, image, _), t)| serde_json::json!({
            "role": role.name, "newest_image": image.image_id, "instance_type": t.instance_type,
            "labels": t.labels, "instance_cap": t.instance_cap, "spot": t.spot.is_some(),
            "spot_max_price": t.spot.clone().flatten(),
        })).collect::<Vec<_>>(),
        "casc": casc(&jcloud, &templates),
    });
    ctx.out.record(&json, || {
        let table = crate::output::render_table(&["ROLE", "NEWEST IMAGE", "TYPE", "LABELS", "CAP", "MARKET"], &rows);
        if a.dry_run {
            format!("{table}\n{yaml}")
        } else {
            table
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// The key-pair patterns of the agents' `cgcloud:keypairs` tag: the master's own key first, then
/// `-k` patterns, or else whoever may log in to the master.
async fn agent_key_patterns(ctx: &Ctx, a: &RegisterAgentsArgs, master: &BoxInfo, key_pair: &str) -> Result<String> {
    let patterns = if a.keypairs.is_empty() {
        // The master's key first; then whoever may log in to the master may log in to agents.
        let mut p = vec![key_pair.to_owned()];
        p.extend(master.tags.get(tags::KEYPAIRS).into_iter().flat_map(|k| k.split_whitespace().map(str::to_owned)));
        p
    } else {
        let mut p = vec![key_pair.to_owned()];
        for k in &a.keypairs {
            p.push(ctx.resolve_keypair(k).await?);
        }
        p
    };
    let mut patterns_dedup: Vec<String> = Vec::new();
    for p in patterns {
        if !patterns_dedup.contains(&p) {
            patterns_dedup.push(p);
        }
    }
    let keypairs = patterns_dedup.join(" ");
    if keypairs.chars().count() > 256 {
        bail!("the agents' key-pair patterns '{keypairs}' do not fit in a tag (256 characters); give fewer with -k");
    }
    Ok(keypairs)
}

/// The agent roles `-a` names (every one by default), each with its newest image and instance
/// type; checked before anything is made. Roles without an image are skipped unless named.
async fn choose_agent_roles(
    ctx: &Ctx,
    a: &RegisterAgentsArgs,
    ns: &Namespace,
) -> Result<Vec<(Role, ImageInfo, String)>> {
    let registry = ctx.registry().await?;
    let cloud = ctx.cloud().await?;
    let globs: Vec<String> = if a.agents.is_empty() { vec!["*".to_owned()] } else { a.agents.clone() };
    let compiled: Vec<Glob> = globs.iter().map(|g| Glob::new(g)).collect();
    let explicit = !a.agents.is_empty();
    let mut roles = Vec::new();
    let agent_roles: Vec<Role> = registry
        .list()
        .into_iter()
        .filter_map(|s| registry.role(&s.name).ok())
        .filter(|r| r.jenkins_agent.is_some())
        .collect();
    let known: Vec<String> = agent_roles.iter().map(|r| r.name.clone()).collect();
    for role in agent_roles {
        if compiled.iter().any(|g| g.matches(&role.name)) {
            roles.push(role);
        }
    }
    if roles.is_empty() {
        bail!("no Jenkins agent role matches {}; agent roles: {}", globs.join(" "), known.join(", "));
    }
    let mut chosen = Vec::new();
    for role in roles {
        // The master may pass (and manage instances of) only the profiles of roles so named.
        if !role.name.starts_with(AGENT_ROLE_PREFIX) {
            bail!(
                "agent role '{}' is not named {AGENT_ROLE_PREFIX}*: the master's instance profile lets it launch and manage only agents with those roles' profiles; rename the role",
                role.name
            );
        }
        let images = cloud.list_images(ns.as_str(), Some(&role.name)).await?;
        let Some(newest) = images
            .iter()
            .filter(|i| i.state == "available")
            .max_by(|x, y| x.creation_date.cmp(&y.creation_date))
            .cloned()
        else {
            if explicit {
                bail!(
                    "role '{}' has no image in namespace {ns}; bake one first: `cgcloud create -I -T {}`",
                    role.name,
                    role.name
                );
            }
            ctx.out
                .note(format!("skipping {}: no image (bake one with `cgcloud create -I -T {}`)", role.name, role.name));
            continue;
        };
        let instance_type =
            a.instance_type.clone().or(role.instance.instance_type.clone()).unwrap_or_else(|| "t3.micro".to_owned());
        cloud.instance_type_info(&instance_type).await?;
        // The template names the role's security group and instance profile, made below.
        let names = cgcloud_core::limits::derived(ns, &role.name, &[role.name.as_str()], None, true, &[])?;
        cgcloud_core::limits::check(&names)
            .map_err(|e| anyhow!("agent role '{}' in namespace '{ns}': {e}", role.name))?;
        chosen.push((role, newest, instance_type));
    }
    if chosen.is_empty() {
        bail!("none of the agent roles has an image in namespace {ns}; bake one, e.g. `cgcloud create -I -T jenkins-agent-debian-trixie`");
    }
    Ok(chosen)
}

/// What every agent template shares: where agents go and whose keys they take.
struct Shared<'a> {
    ns: &'a Namespace,
    vpc_id: String,
    subnet_id: Option<String>,
    /// The master's key pair, the agents' owner.
    key_pair: &'a str,
    /// The agents' `cgcloud:keypairs` tag.
    keypairs: String,
}

/// The EC2 plugin's template for one agent role. Unless this is a dry run, the role's security
/// group and instance profile are made (or brought up to date) first: the plugin launches with
/// them.
async fn template(
    ctx: &Ctx,
    a: &RegisterAgentsArgs,
    shared: &Shared<'_>,
    role: &Role,
    image: &ImageInfo,
    instance_type: &str,
) -> Result<Template> {
    let cloud = ctx.cloud().await?;
    let ns = shared.ns;
    let decl = role.jenkins_agent.clone().context("an agent role")?;
    let security = if a.dry_run {
        None
    } else {
        // The plugin launches with the role's security group and instance profile: they
        // must exist (and be current) before Jenkins needs them.
        Some(ensure_role_security(cloud, ns, role, &shared.vpc_id, true, None).await?)
    };
    let profile_name = ns.to_aws_name(&role.name)?;
    let profile_arn = match &security {
        Some(_) => cloud
            .instance_profile_arn(&profile_name)
            .await?
            .with_context(|| format!("instance profile {profile_name} was not created"))?,
        // A dry run creates nothing: the ARN the profile has, or will have.
        None => match cloud.instance_profile_arn(&profile_name).await? {
            Some(arn) => arn,
            None => format!(
                "arn:aws:iam::{}:instance-profile{}{profile_name}",
                cloud.caller_identity().await?.0,
                ns.iam_path()
            ),
        },
    };
    let mut t = Tags::new();
    t.insert(tags::NAME.into(), ns.to_aws_name(&role.name)?);
    t.insert(tags::NAMESPACE.into(), ns.to_string());
    t.insert(tags::ROLE.into(), role.name.clone());
    t.insert(tags::OWNER.into(), shared.key_pair.to_owned());
    t.insert(tags::AGENT.into(), "true".into());
    t.insert(tags::KEYPAIRS.into(), shared.keypairs.clone());
    for k in [tags::ADMIN_USER, tags::OS] {
        if let Some(v) = image.tags.get(k) {
            t.insert(k.into(), v.clone());
        }
    }
    Ok(Template {
        role: role.name.clone(),
        namespace: ns.to_string(),
        labels: decl.labels_for(&role.name),
        instance_type: instance_type.to_owned(),
        remote_fs: decl.remote_fs.clone(),
        user: decl.user.clone(),
        security_group: ns.to_aws_name(&role.name)?,
        subnet_id: shared.subnet_id.clone(),
        instance_profile_arn: profile_arn,
        tags: t,
        instance_cap: a.instance_cap,
        idle_minutes: a.idle_minutes,
        executors: a.executors,
        spot: (a.spot || a.spot_bid.is_some()).then(|| a.spot_bid.map(|p| format!("{p}"))),
    })
}

/// Installs the templates on the master and has Jenkins reload them; what the master's script
/// did (`reloaded`, `written`, `unchanged`).
async fn install(ctx: &Ctx, master: &BoxInfo, yaml: &str) -> Result<String> {
    let target = ctx.ssh_target(master, None, None).await.map(|mut t| {
        t.user = master.admin_user.clone().unwrap_or(t.user);
        t
    })?;
    let progress = ctx.out.progress(format!("writing {AGENTS_FILE} on {} and reloading Jenkins", master.instance_id));
    let said = run_with_input(&target, &format!("sudo -n {INSTALL}"), yaml.as_bytes())
        .await
        .with_context(|| format!("could not install the agent templates on the master {}", master.instance_id))?;
    target.close().await;
    let action = said.lines().last().unwrap_or("").trim().to_owned();
    progress.finish(format!("{AGENTS_FILE} on {}: {action}", master.instance_id));
    if action == "written" {
        ctx.out.note("Jenkins is not running on the master; it reads the templates when it starts");
    }
    Ok(action)
}

/// The EC2 plugin's cloud of namespace `ns` in Jenkins: `cgcloud` and the namespace's AWS
/// prefix (`cgcloud-hannes`, `cgcloud-team_ci`; `cgcloud` for the root namespace).
fn cloud_name(ns: &cgcloud_core::Namespace) -> String {
    let prefix = ns.aws_prefix();
    match prefix.strip_suffix('_') {
        Some(p) if !p.is_empty() => format!("cgcloud-{p}"),
        _ => "cgcloud".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cloud_names_are_good_jenkins_names() {
        for (ns, name) in [("/hannes/", "cgcloud-hannes"), ("/team/ci/", "cgcloud-team_ci"), ("/", "cgcloud")] {
            let got = super::cloud_name(&Namespace::parse(ns).unwrap());
            assert_eq!(got, name);
            // Jenkins.checkGoodName's refused characters.
            assert!(!got.chars().any(|c| "?*/\\%!@#$^&|<>[]:;".contains(c)), "{got}");
        }
    }

    use cgcloud_core::policy::Request;
    use cgcloud_core::Namespace;

    /// The master may pass only its namespace's agent roles to the instances it launches: not
    /// its own role, not another namespace's, not an administrator's.
    #[test]
    fn the_master_passes_only_agent_roles() {
        let reg = cgcloud_roles::Registry::builtin().unwrap();
        let master = reg.role("jenkins-master").unwrap();
        let ns = Namespace::parse("/hannes/").unwrap();
        let policy = super::super::launch::iam_policy(&ns, &master, true).unwrap();
        let pass = |arn: &str| {
            policy.allows(&Request::new("iam:PassRole", arn).with("iam:PassedToService", &["ec2.amazonaws.com"]))
        };
        assert!(pass("arn:aws:iam::123456789012:role/cgcloud/hannes/hannes_jenkins-agent-debian-trixie"));
        assert!(!pass("arn:aws:iam::123456789012:role/cgcloud/hannes/hannes_jenkins-master"));
        assert!(!pass("arn:aws:iam::123456789012:role/cgcloud/team/team_jenkins-agent-debian-trixie"));
        assert!(!pass("arn:aws:iam::123456789012:role/Admin"));
        // What the EC2 plugin documents that it needs (launching and terminating are narrowed
        // to its agents: `the_master_manages_only_its_agents`), and nothing of IAM beyond it.
        for action in ["ec2:GetConsoleOutput", "ec2:DescribeImages", "ec2:DescribeKeyPairs", "ec2:RequestSpotInstances"]
        {
            assert!(policy.allows(&Request::new(action, "*")), "{action}");
        }
        for action in ["iam:CreateRole", "iam:PutRolePolicy", "ec2:DeleteKeyPair", "ec2:ImportKeyPair", "s3:GetObject"]
        {
            assert!(!policy.allows(&Request::new(action, "*")), "{action} is allowed");
        }
    }

    /// Cluster membership and leadership, and which node a volume is for, are tags only the
    /// workstation writes: no box of any built-in role may set them, at a launch or later, on
    /// itself, on an instance it launched or on a volume (`iam_policy` refuses a role whose
    /// statements would allow it, so a plugin role cannot either). Nodes trust them (a planted
    /// leader, a planted volume) because of this.
    #[test]
    fn no_box_writes_what_cluster_nodes_trust() {
        let reg = cgcloud_roles::Registry::builtin().unwrap();
        let ns = Namespace::parse("/hannes/").unwrap();
        let mut roles = 0;
        for summary in reg.list() {
            let role = reg.role(&summary.name).unwrap();
            let policy = super::super::launch::iam_policy(&ns, &role, true).unwrap();
            assert_eq!(cgcloud_core::policy::writes_workstation_tags(&policy), None, "{}", role.name);
            roles += 1;
        }
        assert!(roles > 10);
        let mut reg = cgcloud_roles::Registry::builtin().unwrap();
        reg.add_plugin_text(
            "tagger.toml",
            "name = 'tagger'\ndescription = 'd'\ninclude = ['base']\nos = ['debian-12']\n[[iam]]\naction = ['ec2:CreateTags']\n",
        )
        .unwrap();
        let err = super::super::launch::iam_policy(&ns, &reg.role("tagger").unwrap(), true).unwrap_err().to_string();
        assert!(err.contains("role 'tagger'") && err.contains("without limiting aws:TagKeys"), "{err}");
    }

    /// The attack of a compromised master on the boxes of the account: it must not be able to
    /// tag (e.g. `cgcloud:keypairs`, which agents trust), stop or terminate any instance but its
    /// own agents, nor launch instances with another profile; what the EC2 plugin does to its
    /// agents stays allowed.
    #[test]
    fn the_master_manages_only_its_agents() {
        let reg = cgcloud_roles::Registry::builtin().unwrap();
        let master = reg.role("jenkins-master").unwrap();
        let ns = Namespace::parse("/hannes/").unwrap();
        let policy = super::super::launch::iam_policy(&ns, &master, true).unwrap();
        let instance = "arn:aws:ec2:us-west-2:123456789012:instance/i-0123456789abcdef0";
        let agent = "arn:aws:iam::123456789012:instance-profile/cgcloud/hannes/hannes_jenkins-agent-debian-trixie";
        let other = [
            "arn:aws:iam::123456789012:instance-profile/cgcloud/hannes/hannes_generic-debian-trixie-box",
            "arn:aws:iam::123456789012:instance-profile/cgcloud/team/team_jenkins-agent-debian-trixie",
            "arn:aws:iam::123456789012:instance-profile/cgcloud/hannes/hannes_jenkins-master",
        ];
        let on = |action: &str, profile: Option<&str>| {
            let r = Request::new(action, instance);
            policy.allows(&match profile {
                Some(p) => r.with("ec2:InstanceProfile", &[p]),
                None => r,
            })
        };
        for action in
            ["ec2:CreateTags", "ec2:DeleteTags", "ec2:StopInstances", "ec2:StartInstances", "ec2:TerminateInstances"]
        {
            assert!(on(action, Some(agent)), "{action} on its agent");
            assert!(!on(action, None), "{action} on a box without a profile");
            for p in other {
                assert!(!on(action, Some(p)), "{action} on a box with {p}");
            }
        }
        // Launching: an instance only with an agent profile; tags only at launch or on agents.
        assert!(on("ec2:RunInstances", Some(agent)));
        assert!(!on("ec2:RunInstances", Some(other[0])));
        assert!(!on("ec2:RunInstances", None));
        for r in ["arn:aws:ec2:us-west-2::image/ami-0123", "arn:aws:ec2:us-west-2:123456789012:volume/vol-1"] {
            assert!(policy.allows(&Request::new("ec2:RunInstances", r)), "{r}");
        }
        // Into its agents' groups only: not a cluster's (Spark's and HDFS's ports are open inside).
        let group = |role: &str, ns: &str| {
            Request::new("ec2:RunInstances", "arn:aws:ec2:us-west-2:123456789012:security-group/sg-1")
                .with("ec2:ResourceTag/cgcloud:role", &[role])
                .with("ec2:ResourceTag/cgcloud:namespace", &[ns])
        };
        assert!(policy.allows(&group("jenkins-agent-debian-trixie", "/hannes/")));
        assert!(!policy.allows(&group("spark-box", "/hannes/")));
        assert!(!policy.allows(&group("jenkins-agent-debian-trixie", "/team/")));
        // What a template and the EC2 plugin tag an agent with.
        let keys = ["Name", "cgcloud:namespace", "cgcloud:role", "cgcloud:keypairs", "jenkins_slave_type"];
        let tag_at_launch = Request::new("ec2:CreateTags", instance)
            .with("ec2:CreateAction", &["RunInstances"])
            .with("aws:RequestTag/cgcloud:namespace", &["/hannes/"])
            .with("aws:TagKeys", &keys);
        assert!(policy.allows(&tag_at_launch));
        let tag_later = Request::new("ec2:CreateTags", instance).with("ec2:CreateAction", &["CreateTags"]);
        assert!(!policy.allows(&tag_later.clone().with("ec2:InstanceProfile", &[other[0]])));
        let on_agent = tag_later.with("ec2:InstanceProfile", &[agent]);
        assert!(policy.allows(&on_agent.clone().with("aws:TagKeys", &["jenkins_slave_type"])));
        // The attack: an agent-profile instance tagged as a member of someone's cluster (its
        // leader, with its own host key), at launch or later; or launched into another
        // namespace. Nodes trust these tags, so the master may write none of them.
        for key in
            ["cgcloud:cluster", "cgcloud:ordinal", "cgcloud:leader-arn", "cgcloud:persistent", "cgcloud:attach-to"]
        {
            let mut planted: Vec<&str> = keys.to_vec();
            planted.push(key);
            assert!(!policy.allows(&tag_at_launch.clone().with("aws:TagKeys", &planted)), "{key} at launch");
            assert!(!policy.allows(&on_agent.clone().with("aws:TagKeys", &[key])), "{key} later");
            let volume = "arn:aws:ec2:us-west-2:123456789012:volume/vol-1";
            let on_volume = Request::new("ec2:CreateTags", volume)
                .with("ec2:CreateAction", &["RunInstances"])
                .with("aws:RequestTag/cgcloud:namespace", &["/hannes/"])
                .with("aws:TagKeys", &planted);
            assert!(!policy.allows(&on_volume), "{key} on a volume made at launch");
        }
        let elsewhere = tag_at_launch.clone().with("aws:RequestTag/cgcloud:namespace", &["/team/"]);
        assert!(!policy.allows(&elsewhere));
        // An agent passing for a box of another role (which `cgcloud ssh ROLE` would pick).
        let posing = tag_at_launch.clone().with("aws:RequestTag/cgcloud:role", &["generic-debian-bookworm-box"]);
        assert!(!policy.allows(&posing));
        assert!(
            policy.allows(&tag_at_launch.clone().with("aws:RequestTag/cgcloud:role", &["jenkins-agent-debian-trixie"]))
        );
        assert!(!policy.allows(
            &on_agent
                .clone()
                .with("aws:TagKeys", &["cgcloud:role"])
                .with("aws:RequestTag/cgcloud:role", &["spark-box"])
        ));
        assert!(!policy.allows(
            &on_agent.with("aws:RequestTag/cgcloud:namespace", &["/team/"]).with("aws:TagKeys", &["cgcloud:namespace"])
        ));
        // Key pairs (whose tags `@user` patterns trust) are not the master's to tag.
        let key_pair = "arn:aws:ec2:us-west-2:123456789012:key-pair/alice";
        assert!(!policy.allows(&Request::new("ec2:CreateTags", key_pair)));
        // PassRole only to EC2.
        let role = "arn:aws:iam::123456789012:role/cgcloud/hannes/hannes_jenkins-agent-debian-trixie";
        assert!(policy.allows(&Request::new("iam:PassRole", role).with("iam:PassedToService", &["ec2.amazonaws.com"])));
        assert!(
            !policy.allows(&Request::new("iam:PassRole", role).with("iam:PassedToService", &["lambda.amazonaws.com"]))
        );
    }
}
