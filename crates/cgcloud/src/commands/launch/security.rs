//! A role's security group and IAM role and instance profile, made or brought up to date for a
//! launch (and for `register-agents` and `update-instance-profile`).

use super::*;

/// IAM's limit on a role or instance-profile name.
pub(crate) const MAX_IAM_NAME: usize = 64;

pub(super) fn sg_rules(role: &Role) -> Vec<SgRule> {
    let mut rules: Vec<SgRule> = role
        .ports
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
        .collect();
    // A cluster's members fetch the member list from the leader's agent: the port is open to
    // the cluster's own group whatever the role's rules say (they usually open all of it).
    let port = i32::from(cgcloud_core::members::PORT);
    let covered = rules.iter().any(|r| {
        matches!(r.source, SgSource::OwnGroup)
            && (r.protocol == "-1" || (r.protocol == "tcp" && r.from_port <= port && port <= r.to_port))
    });
    if role.cluster.is_some() && !covered {
        rules.push(SgRule {
            protocol: "tcp".into(),
            from_port: port,
            to_port: port,
            source: SgSource::OwnGroup,
            description: "cgcloud: the leader's member list".into(),
        });
    }
    rules
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
