//! What an elastic cluster's leader may do to grow its cluster: launch workers from the launch
//! template the workstation made for this cluster, and nothing else. Its role is made for this
//! one cluster, so every value below is a literal of it.
//!
//! A launch is authorized by IAM on each resource it touches (the template, the instance, its
//! image, groups, key, subnet, interface and volumes, a spot request) and, for the tags it
//! carries, as `ec2:CreateTags` with `ec2:CreateAction=RunInstances`; the worker's profile also
//! needs `iam:PassRole`. Each statement below covers one of those and pins it to the template:
//! the image, groups and key only as the template has them, the profile by ARN, the subnet by
//! VPC, every tag the template carries to the template's value (EC2 evaluates a launch's
//! template tags and request tags together as `aws:RequestTag`) with the leader's ARN as the
//! caller's own, and no tag keys but those plus the few a launch adds. IAM cannot count: how
//! many it launches is the agent's to enforce (see docs/security.md).

use super::{Op, Statement, SOURCE_INSTANCE};
use crate::tags::{self, Tags};

/// The tag keys a leader's launch adds to the template's, with values of its choosing: which
/// workers a launch made, and which call (`cgcloud:launch-call`, its client token).
pub const LAUNCH_KEYS: [&str; 3] = [tags::ORDINALS, tags::LAUNCH_CALL, tags::LAUNCH];

/// The workstation-only tags a leader's launch may carry, each pinned to this cluster's value
/// except `ORDINALS` (whose `0` readers refuse: ordinal 0 is only ever an `ORDINAL` tag).
pub const LAUNCH_WORKSTATION_TAGS: [&str; 7] = [
    tags::CLUSTER,
    tags::CLUSTER_TYPE,
    tags::ORDINALS,
    tags::LEADER,
    tags::LEADER_ARN,
    tags::NODE_ROLE,
    tags::NODE_PREFIX,
];

/// This cluster, as its leader's policy names it.
#[derive(Debug, Clone)]
pub struct ScalerScope<'a> {
    /// `arn:aws:ec2:REGION:ACCOUNT:launch-template/lt-…`
    pub template_arn: &'a str,
    /// `arn:aws:ec2:REGION:ACCOUNT:vpc/vpc-…`: workers go in its subnets only.
    pub vpc_arn: &'a str,
    /// The workers' instance profile, as `ec2:InstanceProfile` names it.
    pub worker_profile_arn: &'a str,
    /// The role of that profile, which the launch passes.
    pub worker_role_arn: &'a str,
    /// Instance-type patterns (`m7i.*`) the leader may launch.
    pub instance_types: &'a [String],
    /// The tags every worker is launched with (the template's, on instances and volumes alike).
    pub tags: &'a Tags,
}

/// A scope that would let the leader write what it must not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the workers' tags {0}")]
pub struct ScopeError(String);

/// Tags a worker is never launched with by its leader: its own ordinal (0 would make it a
/// leader), a volume's owner, the workstation's marks of a launch in progress, and the
/// leader's own settings.
const NEVER: [&str; 13] = [
    tags::ORDINAL,
    tags::PERSISTENT,
    tags::ATTACH_TO,
    tags::EBS_VOLUME_SIZE,
    tags::AUTOSTOP,
    tags::AUTOSTOP_ACTION,
    tags::LAUNCH_STATE,
    tags::LAUNCHER,
    tags::SCALING,
    tags::SCALING_TYPES,
    tags::SCALING_MARKET,
    tags::SCALING_SUBNETS,
    tags::LAUNCH_TEMPLATE,
];

/// The leader's statements for launching its cluster's workers (stopping and terminating them
/// is `agent_statements`' "the nodes it leads").
pub fn scaler_statements(scope: &ScalerScope) -> Result<Vec<Statement>, ScopeError> {
    for key in [tags::NAMESPACE, tags::CLUSTER, tags::LEADER_ARN] {
        if !scope.tags.contains_key(key) {
            return Err(ScopeError(format!("lack {key}")));
        }
    }
    if let Some(key) = NEVER.iter().chain(&LAUNCH_KEYS).find(|k| scope.tags.contains_key(**k)) {
        return Err(ScopeError(format!("hold {key}, which a leader's launch must not carry")));
    }
    let template = [scope.template_arn];
    let from_template = |s: Statement| s.when(Op::ArnLike, "ec2:LaunchTemplate", &template);
    let keys: Vec<&str> = scope.tags.keys().map(String::as_str).chain(LAUNCH_KEYS).collect();
    // The template's tags, each with its value; the leader's ARN as the caller's own.
    let pinned = |mut s: Statement| {
        for (k, v) in scope.tags {
            let value = if k == tags::LEADER_ARN { SOURCE_INSTANCE } else { v.as_str() };
            s = s.when(Op::StringEquals, &format!("aws:RequestTag/{k}"), &[value]);
        }
        s.when(Op::ForAllValuesStringEquals, "aws:TagKeys", &keys)
    };
    let types: Vec<&str> = scope.instance_types.iter().map(String::as_str).collect();
    Ok(vec![
        Statement::allow("launch from its cluster's template", &["ec2:RunInstances"], &template),
        pinned(from_template(Statement::allow(
            "launch its cluster's workers",
            &["ec2:RunInstances"],
            &["arn:aws:ec2:*:*:instance/*"],
        )))
        .when(Op::ArnLike, "ec2:InstanceProfile", &[scope.worker_profile_arn])
        .when(Op::StringLike, "ec2:InstanceType", &types),
        // Volumes carry the workers' tags too, so that none is made to look like another box's
        // persistent volume (a box attaches the one given to it by tag).
        pinned(from_template(Statement::allow(
            "launch with its workers' volumes",
            &["ec2:RunInstances"],
            &["arn:aws:ec2:*:*:volume/*"],
        ))),
        from_template(Statement::allow(
            "launch with the template's image, groups and key",
            &["ec2:RunInstances"],
            &["arn:aws:ec2:*:*:image/*", "arn:aws:ec2:*:*:security-group/*", "arn:aws:ec2:*:*:key-pair/*"],
        ))
        .when(Op::Bool, "ec2:IsLaunchTemplateResource", &["true"]),
        // The subnet is each launch's own (a zone short of capacity is skipped), in the VPC.
        from_template(Statement::allow(
            "launch in its cluster's subnets",
            &["ec2:RunInstances"],
            &["arn:aws:ec2:*:*:subnet/*", "arn:aws:ec2:*:*:network-interface/*"],
        ))
        .when(Op::ArnLike, "ec2:Vpc", &[scope.vpc_arn]),
        from_template(Statement::allow(
            "launch on the spot market",
            &["ec2:RunInstances"],
            &["arn:aws:ec2:*:*:spot-instances-request/*"],
        )),
        pinned(Statement::allow(
            "tag its workers as they launch",
            &["ec2:CreateTags"],
            &["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*"],
        ))
        .when(Op::StringEquals, "ec2:CreateAction", &["RunInstances"]),
        Statement::allow("pass the workers' role", &["iam:PassRole"], &[scope.worker_role_arn]).when(
            Op::StringEquals,
            "iam:PassedToService",
            &["ec2.amazonaws.com"],
        ),
    ])
}

/// Whether `s`, a statement allowing `ec2:CreateTags` with some workstation-only keys, is one
/// that can only tag a leader's own workers as they launch: `ec2:CreateAction` is exactly
/// `RunInstances`, it names only instances and volumes, it lists none of the keys a launch
/// must never carry, and each workstation key it lists but `ORDINALS` is pinned to one literal
/// value, the leader's ARN to the caller's own. The namespace and cluster must be pinned too.
pub fn launch_tagging_is_bound(s: &Statement) -> bool {
    let pinned = |key: &str| -> Option<&[String]> {
        let name = format!("aws:RequestTag/{key}");
        let mut cs = s.conditions.iter().filter(|c| c.key == name);
        match (cs.next(), cs.next()) {
            (Some(c), None) if c.op == Op::StringEquals && c.values.len() == 1 => Some(&c.values),
            _ => None,
        }
    };
    let literal = |key: &str| pinned(key).is_some_and(|v| !v[0].contains(['*', '?', '$']));
    let only = |key: &str, value: &str| {
        s.conditions.iter().any(|c| c.key == key && c.op == Op::StringEquals && c.values == [value])
    };
    let Some(keys) = s.conditions.iter().find(|c| c.op == Op::ForAllValuesStringEquals && c.key == "aws:TagKeys")
    else {
        return false;
    };
    let on_launched = s.resources.iter().all(|r| {
        r.splitn(6, ':').nth(5).is_some_and(|res| res == "instance/*" || res == "volume/*")
            && r.starts_with("arn:")
            && !r.contains('?')
    });
    s.actions.iter().all(|a| a.eq_ignore_ascii_case("ec2:CreateTags"))
        && only("ec2:CreateAction", "RunInstances")
        && s.conditions.iter().filter(|c| c.key == "ec2:CreateAction").count() == 1
        && on_launched
        && literal(tags::NAMESPACE)
        && literal(tags::CLUSTER)
        && pinned(tags::LEADER_ARN).is_some_and(|v| v[0] == SOURCE_INSTANCE)
        && keys.values.iter().all(|k| !NEVER.contains(&k.as_str()))
        && keys.values.iter().all(|k| {
            !super::WORKSTATION_TAGS.contains(&k.as_str())
                || k == tags::ORDINALS
                || k == tags::LEADER_ARN
                || (LAUNCH_WORKSTATION_TAGS.contains(&k.as_str()) && literal(k))
        })
}

#[cfg(test)]
mod tests;
