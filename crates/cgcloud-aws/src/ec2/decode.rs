//! Reading instances: what EC2 says of one in plain terms (`InstanceInfo`), and as a cgcloud box
//! (or a box of the original CGCloud) from its tags, where a tag the box wrote itself (its host
//! key) is trusted only in its one valid shape.

use super::*;
use aws_sdk_ec2::types::Instance;
use cgcloud_core::model::BoxInfo;
use cgcloud_core::tags::{self, Tags};

/// An instance as EC2 describes it, in plain terms: no SDK type leaves this crate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub private_ip: Option<String>,
    pub private_dns: Option<String>,
    pub image_id: String,
    pub key_name: Option<String>,
    pub instance_type: String,
    pub zone: String,
    /// The instance profile's name.
    pub instance_profile: Option<String>,
    /// Whether IMDS requires session tokens (IMDSv2 only).
    pub tokens_required: bool,
    pub spot: bool,
    /// Its security groups' ids.
    pub security_groups: Vec<String>,
}

pub(crate) fn instance_info(i: &Instance) -> InstanceInfo {
    InstanceInfo {
        id: i.instance_id().unwrap_or_default().to_owned(),
        state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default(),
        vpc_id: i.vpc_id().map(str::to_owned),
        subnet_id: i.subnet_id().map(str::to_owned),
        private_ip: i.private_ip_address().filter(|s| !s.is_empty()).map(str::to_owned),
        private_dns: i.private_dns_name().filter(|s| !s.is_empty()).map(str::to_owned),
        image_id: i.image_id().unwrap_or_default().to_owned(),
        key_name: i.key_name().map(str::to_owned),
        instance_type: i.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        zone: i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_owned(),
        instance_profile: profile_name(i),
        tokens_required: i
            .metadata_options()
            .and_then(|m| m.http_tokens())
            .is_some_and(|t| *t == aws_sdk_ec2::types::HttpTokensState::Required),
        spot: i.instance_lifecycle().is_some_and(|l| *l == aws_sdk_ec2::types::InstanceLifecycleType::Spot),
        security_groups: i.security_groups().iter().filter_map(|g| g.group_id().map(str::to_owned)).collect(),
    }
}

fn profile_name(i: &Instance) -> Option<String> {
    i.iam_instance_profile().and_then(|p| p.arn()).and_then(|a| a.rsplit('/').next()).map(str::to_owned)
}

/// Decodes an instance into a box; `None` if it carries no cgcloud role/namespace tags.
pub(crate) fn box_from_instance(i: &Instance) -> Option<BoxInfo> {
    let tags = to_tags(i.tags());
    let role = tags.get(tags::ROLE)?.clone();
    let namespace = tags.get(tags::NAMESPACE)?.clone();
    let mut b = instance_box(i, role, namespace)?;
    b.cluster = tags.get(tags::CLUSTER).cloned();
    b.ordinal = tags::ordinal(&tags, i.ami_launch_index());
    b.leader = tags.get(tags::LEADER).cloned();
    b.generation = tags.get(tags::GENERATION).and_then(|g| g.parse().ok()).unwrap_or(0);
    b.interrupted = i
        .state_reason()
        .filter(|r| r.code().is_some_and(|c| c.starts_with("Server.SpotInstance")))
        .map(|r| r.message().or(r.code()).unwrap_or_default().to_owned());
    b.host_key = trusted_host_key(&b.instance_id, &tags);
    b.admin_user = tags.get(tags::ADMIN_USER).cloned();
    b.persistent_volume = tags.get(tags::PERSISTENT_VOLUME).cloned();
    b.autostop = tags::autostop_text(&tags);
    b.options = tags::options_from_tags(&tags);
    b.tags = tags;
    Some(b)
}

/// What EC2 itself says of an instance, as a box of `role` in `namespace`; what the tags say is
/// the caller's to add.
fn instance_box(i: &Instance, role: String, namespace: String) -> Option<BoxInfo> {
    Some(BoxInfo {
        instance_id: i.instance_id()?.to_owned(),
        role,
        namespace,
        cluster: None,
        ordinal: None,
        leader: None,
        state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default(),
        instance_type: i.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        zone: i.placement().and_then(|p| p.availability_zone()).map(str::to_owned),
        private_ip: i.private_ip_address().filter(|s| !s.is_empty()).map(str::to_owned),
        public_ip: i.public_ip_address().filter(|s| !s.is_empty()).map(str::to_owned),
        private_dns: i.private_dns_name().filter(|s| !s.is_empty()).map(str::to_owned),
        launch_time: time(i.launch_time()),
        image_id: i.image_id().map(str::to_owned),
        key_name: i.key_name().map(str::to_owned),
        generation: 0,
        spot: i.instance_lifecycle().is_some_and(|l| l.as_str() == "spot"),
        interrupted: None,
        host_key: None,
        admin_user: None,
        instance_profile: profile_name(i),
        persistent_volume: None,
        autostop: None,
        options: Default::default(),
        tags: Tags::new(),
    })
}

/// The tags by which the original (Python) CGCloud recognised its boxes; a box of it has at
/// least one of them and no `cgcloud:namespace`.
pub const ORIGINAL_TAGS: [&str; 4] = ["generation", "cluster_ordinal", "cluster_name", "leader_instance_id"];

/// A box of the original (Python) CGCloud in namespace `ns`, as far as its tags tell: its role is
/// its `Name` (the same encoding as ours), its cluster `cluster_name` (which the original set to
/// a standalone box's own id, left out here), its ordinal `cluster_ordinal`, its leader
/// `leader_instance_id`. Tag values the box could have written are made printable.
pub(crate) fn original_box_from_instance(ns: &cgcloud_core::namespace::Namespace, i: &Instance) -> Option<BoxInfo> {
    let tags = to_tags(i.tags());
    if tags.contains_key(tags::NAMESPACE) || !ORIGINAL_TAGS.iter().any(|t| tags.contains_key(*t)) {
        return None;
    }
    let name = tags.get("Name")?;
    if !ns.owns_aws_name(name) {
        return None;
    }
    let role = ns.from_aws_name(name).ok()?;
    let mut b = instance_box(i, role, ns.to_string())?;
    let text = |k: &str| tags.get(k).map(|v| cgcloud_core::tags::printable(v));
    b.cluster = text("cluster_name").filter(|c| *c != b.instance_id);
    b.ordinal = tags.get("cluster_ordinal").and_then(|o| o.parse().ok());
    b.leader = text("leader_instance_id").filter(|l| *l != b.instance_id);
    b.generation = tags.get("generation").and_then(|g| g.parse().ok()).unwrap_or(0);
    b.admin_user = text("admin_user");
    Some(b)
}

/// The host key tag of a box, if it is exactly one key as `type base64`. The box writes this
/// tag itself, and its value goes into the workstation's known_hosts: anything else (a second
/// line naming other hosts, a `@revoked` marker) would let one box break or take over
/// connections to the others, so such a box counts as having no host key.
fn trusted_host_key(instance_id: &str, tags: &Tags) -> Option<String> {
    let value = tags.get(tags::HOST_KEY)?;
    match cgcloud_core::sshkey::PublicKey::parse_bare(value) {
        Ok(_) => Some(value.clone()),
        Err(e) => {
            // The value itself is not shown: the box chose it, and it may hold escape sequences.
            tracing::warn!(
                "box {instance_id} published an invalid SSH host key (tag {}): {e}; not trusting it",
                tags::HOST_KEY
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::Tag;

    fn instance_with_host_key(key: &str) -> Instance {
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        Instance::builder()
            .instance_id("i-0evil")
            .tags(tag(tags::ROLE, "generic-cluster-box"))
            .tags(tag(tags::NAMESPACE, "/ns/"))
            .tags(tag(tags::HOST_KEY, key))
            .build()
    }

    /// The attack of a cluster node on the workstation: a host key tag that smuggles more
    /// known_hosts lines in. Such a box has no host key as far as the workstation is concerned.
    #[test]
    fn host_key_tags_are_trusted_only_as_one_bare_key() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPKyfQohiwzQo5mb9ynx0GAr7xoYSkYSy+eDZ8g2i9ke";
        let peer = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA".to_owned() + &"B".repeat(42);
        let good = box_from_instance(&instance_with_host_key(key)).unwrap();
        assert_eq!(good.host_key.as_deref(), Some(key));
        for bad in [format!("{key}\n@revoked * {peer}"), format!("{key}\n* {peer}"), format!("{key} comment")] {
            let b = box_from_instance(&instance_with_host_key(&bad)).unwrap();
            assert_eq!(b.host_key, None, "{bad:?}");
            // The raw tag stays readable (for the message saying why the box is not trusted).
            assert_eq!(b.tags.get(tags::HOST_KEY), Some(&bad));
        }
    }
}
