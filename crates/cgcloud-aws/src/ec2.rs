//! EC2 verbs: boxes (instances), images, security groups, key pairs, networks and instance
//! types. Every listing is a paginated tag query scoped to one namespace.

use crate::error::other;
use crate::{AwsError, Cloud};
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, IamInstanceProfileSpecification, Instance, InstanceType, IpPermission,
    IpRange, Placement, ResourceType, Tag, TagSpecification, UserIdGroupPair, VolumeType,
};
use aws_smithy_types::date_time::Format;
use base64::Engine as _;
use cgcloud_core::model::{BoxInfo, ImageInfo};
use cgcloud_core::tags::{self, Tags};
use std::collections::BTreeMap;
use std::time::Duration;

pub fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder().name(name).set_values(Some(values.iter().map(|v| (*v).to_owned()).collect())).build()
}

pub fn tag_filter(key: &str, value: &str) -> Filter {
    filter(&format!("tag:{key}"), &[value])
}

fn to_tags(tags: &[Tag]) -> Tags {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect()
}

pub fn tag_list(tags: &Tags) -> Vec<Tag> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

fn tag_spec(resource: ResourceType, tags: &Tags) -> TagSpecification {
    TagSpecification::builder().resource_type(resource).set_tags(Some(tag_list(tags))).build()
}

fn time(dt: Option<&aws_smithy_types::DateTime>) -> String {
    dt.and_then(|d| d.fmt(Format::DateTime).ok()).unwrap_or_default()
}

/// Decodes an instance into a box; `None` if it carries no cgcloud role/namespace tags.
pub fn box_from_instance(i: &Instance) -> Option<BoxInfo> {
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
        instance_profile: i
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .and_then(|a| a.rsplit('/').next())
            .map(str::to_owned),
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
pub fn original_box_from_instance(ns: &cgcloud_core::namespace::Namespace, i: &Instance) -> Option<BoxInfo> {
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

/// What `run_instances` needs.
#[derive(Debug, Clone, Default)]
pub struct LaunchSpec {
    pub image_id: String,
    pub instance_type: String,
    pub count: i32,
    /// Accept as few as this many when capacity is short (default: all of `count`).
    pub min_count: Option<i32>,
    pub key_name: Option<String>,
    pub security_group_ids: Vec<String>,
    pub subnet_id: Option<String>,
    pub zone: Option<String>,
    /// Raw user data; base64-encoded here.
    pub user_data: String,
    pub instance_profile: Option<String>,
    /// (device name, size in GiB) of the root volume.
    pub root_volume: Option<(String, i32)>,
    pub tags: Tags,
    /// Makes a retried RunInstances idempotent.
    pub client_token: Option<String>,
    /// Launch on the spot market, with this maximum price (None: up to the on-demand price).
    pub spot: Option<Option<String>>,
    /// Device names for the instance-store disks of Xen instance types, which exist only
    /// where the launch maps them (Nitro instances always show theirs as NVMe devices).
    pub instance_store_devices: Vec<String>,
}

/// The parts of DescribeInstanceTypes cgcloud uses.
#[derive(Debug, Clone)]
pub struct InstanceTypeInfo {
    pub arches: Vec<String>,
    /// The size (GB) of each instance-store disk, one entry per disk.
    pub instance_store_gb: Vec<u64>,
    pub nvme_instance_store: bool,
}

impl InstanceTypeInfo {
    /// The device names to map instance-store disks to at launch: none on Nitro types.
    pub fn mapped_instance_store(&self) -> Vec<String> {
        if self.nvme_instance_store {
            return Vec::new();
        }
        instance_store_device_names(self.instance_store_gb.len())
    }
}

/// `/dev/sdb`, `/dev/sdc`, … for `n` instance-store disks, leaving out `/dev/sdf`, where a
/// cluster node's persistent volume goes.
pub fn instance_store_device_names(n: usize) -> Vec<String> {
    ('b'..='z').filter(|c| *c != 'f').take(n).map(|c| format!("/dev/sd{c}")).collect()
}

/// Errors that mean EC2 could not provide the capacity (try elsewhere or later).
pub fn is_capacity_error(e: &AwsError) -> bool {
    e.code().is_some_and(|c| {
        matches!(
            c,
            "InsufficientInstanceCapacity"
                | "InsufficientCapacity"
                | "SpotMaxPriceTooLow"
                | "MaxSpotInstanceCountExceeded"
                | "InsufficientFreeAddressesInSubnet"
                | "Unsupported"
        )
    })
}

/// A stock or cgcloud image found by lookup.
#[derive(Debug, Clone)]
pub struct FoundImage {
    pub image_id: String,
    pub name: String,
    pub creation_date: String,
    pub root_device: Option<String>,
    pub owner: Option<String>,
    pub tags: Tags,
}

/// A key pair as EC2 reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyPairInfo {
    pub name: String,
    pub fingerprint: String,
    pub key_type: String,
    pub public_key: Option<String>,
    /// The `cgcloud:owner` tag: the user who registered it (see `cgcloud_core::keypairs`).
    pub owner: Option<String>,
}

/// Network placement resolved for a launch.
#[derive(Debug, Clone)]
pub struct Network {
    pub vpc_id: String,
    pub subnet_id: Option<String>,
    pub zone: Option<String>,
}

impl Cloud {
    /// Every cgcloud box in `namespace` (optionally of one role), any state but terminated.
    pub async fn list_boxes(&self, namespace: &str, role: Option<&str>) -> Result<Vec<BoxInfo>, AwsError> {
        let mut filters = vec![
            tag_filter(tags::NAMESPACE, namespace),
            filter("instance-state-name", &["pending", "running", "stopping", "stopped", "shutting-down"]),
        ];
        if let Some(r) = role {
            filters.push(tag_filter(tags::ROLE, r));
        }
        self.describe_boxes(filters, namespace).await
    }

    /// Boxes of `namespace` that a spot interruption terminated (EC2 lists terminated instances
    /// for about an hour).
    pub async fn interrupted_boxes(&self, namespace: &str) -> Result<Vec<BoxInfo>, AwsError> {
        let filters = vec![tag_filter(tags::NAMESPACE, namespace), filter("instance-state-name", &["terminated"])];
        Ok(self.describe_boxes(filters, namespace).await?.into_iter().filter(|b| b.interrupted.is_some()).collect())
    }

    /// Boxes carrying a given tag value, any live state.
    pub async fn boxes_with_tag(&self, namespace: &str, key: &str, value: &str) -> Result<Vec<BoxInfo>, AwsError> {
        let filters = vec![
            tag_filter(tags::NAMESPACE, namespace),
            tag_filter(key, value),
            filter("instance-state-name", &["pending", "running", "stopping", "stopped", "shutting-down"]),
        ];
        self.describe_boxes(filters, namespace).await
    }

    async fn describe_boxes(&self, filters: Vec<Filter>, namespace: &str) -> Result<Vec<BoxInfo>, AwsError> {
        let pages: Vec<_> = self
            .ec2
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeInstances", e))?;
        // The filter already scopes to the namespace; check again so that nothing outside it
        // can ever be acted on, whatever an endpoint's filter support.
        Ok(pages
            .iter()
            .flat_map(|p| p.reservations())
            .flat_map(|r| r.instances())
            .filter_map(box_from_instance)
            .filter(|b| b.namespace == namespace)
            .collect())
    }

    /// Instances by id (any state), decoded as boxes where they are cgcloud boxes.
    pub async fn describe_instances(&self, ids: &[String]) -> Result<Vec<Instance>, AwsError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let pages: Vec<_> = self
            .ec2
            .describe_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeInstances", e))?;
        Ok(pages.iter().flat_map(|p| p.reservations()).flat_map(|r| r.instances()).cloned().collect())
    }

    /// The live boxes of the original (Python) CGCloud in namespace `ns` (see
    /// `original_box_from_instance`): found by their `Name` tag, which both tools encode alike.
    pub async fn original_boxes(&self, ns: &cgcloud_core::namespace::Namespace) -> Result<Vec<BoxInfo>, AwsError> {
        let pattern = format!("{}*", ns.aws_prefix());
        let pages: Vec<_> = self
            .ec2
            .describe_instances()
            .filters(filter("tag:Name", &[&pattern]))
            .filters(filter("instance-state-name", &["pending", "running", "stopping", "stopped"]))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeInstances", e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.reservations())
            .flat_map(|r| r.instances())
            .filter_map(|i| original_box_from_instance(ns, i))
            .collect())
    }

    /// The namespaces strictly below `ns` (e.g. `/team/ci/` below `/team/`) that have EC2
    /// resources in this region or IAM roles or profiles: the values of every `cgcloud:namespace` tag and
    /// the IAM paths under `ns`'s. Values that are not namespaces are left out.
    pub async fn namespaces_below(
        &self,
        ns: &cgcloud_core::namespace::Namespace,
    ) -> Result<std::collections::BTreeSet<String>, AwsError> {
        let tags: Vec<_> = self
            .ec2
            .describe_tags()
            .filters(filter("key", &[tags::NAMESPACE]))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeTags", e))?;
        let mut found: std::collections::BTreeSet<String> =
            tags.iter().filter_map(|t| t.value().map(str::to_owned)).collect();
        let iam_root = ns.iam_path();
        let prefix = iam_root.strip_suffix(ns.as_str()).unwrap_or_default();
        found.extend(
            self.iam_paths_under(&iam_root).await?.iter().filter_map(|p| p.strip_prefix(prefix).map(str::to_owned)),
        );
        let ns = ns.as_str();
        Ok(found
            .into_iter()
            .filter(|v| v.len() > ns.len() && v.starts_with(ns))
            .filter(|v| cgcloud_core::namespace::Namespace::parse(v).is_ok())
            .collect())
    }

    /// The tags of EC2 resource `id` (any kind); none for a resource that does not exist.
    pub async fn resource_tags(&self, id: &str) -> Result<Tags, AwsError> {
        let tags: Vec<_> = self
            .ec2
            .describe_tags()
            .filters(filter("resource-id", &[id]))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeTags", e))?;
        Ok(tags
            .iter()
            .filter(|t| t.resource_id() == Some(id))
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
            .collect())
    }

    /// The ARN of instance `id`'s instance profile, if it exists and has one.
    pub async fn instance_profile_of(&self, id: &str) -> Result<Option<String>, AwsError> {
        match self.describe_instances(&[id.to_owned()]).await {
            Ok(found) => {
                Ok(found.first().and_then(|i| i.iam_instance_profile()).and_then(|p| p.arn()).map(str::to_owned))
            }
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidInstanceID")) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Gives instance `id` the instance profile `name`, replacing the one it has, or takes its
    /// profile away (`None`). Returns whether anything changed. A profile IAM has only just made
    /// may not be visible to EC2 yet: that is retried for up to 60 s.
    pub async fn set_instance_profile(&self, id: &str, name: Option<&str>) -> Result<bool, AwsError> {
        let current = self
            .ec2
            .describe_iam_instance_profile_associations()
            .filters(Filter::builder().name("instance-id").values(id).build())
            .filters(Filter::builder().name("state").values("associated").values("associating").build())
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeIamInstanceProfileAssociations", e))?;
        let association = current.iam_instance_profile_associations().first().cloned();
        let current_name = association
            .as_ref()
            .and_then(|a| a.iam_instance_profile())
            .and_then(|p| p.arn())
            .and_then(|arn| arn.rsplit('/').next())
            .map(str::to_owned);
        if current_name.as_deref() == name {
            return Ok(false);
        }
        let association_id = association.as_ref().and_then(|a| a.association_id()).map(str::to_owned);
        let Some(name) = name else {
            if let Some(aid) = association_id {
                self.ec2
                    .disassociate_iam_instance_profile()
                    .association_id(aid)
                    .send()
                    .await
                    .map_err(|e| self.classify("ec2:DisassociateIamInstanceProfile", e))?;
            }
            return Ok(true);
        };
        let spec = aws_sdk_ec2::types::IamInstanceProfileSpecification::builder().name(name).build();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let res = match &association_id {
                Some(aid) => self
                    .ec2
                    .replace_iam_instance_profile_association()
                    .association_id(aid)
                    .iam_instance_profile(spec.clone())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| self.classify("ec2:ReplaceIamInstanceProfileAssociation", e)),
                None => self
                    .ec2
                    .associate_iam_instance_profile()
                    .instance_id(id)
                    .iam_instance_profile(spec.clone())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| self.classify("ec2:AssociateIamInstanceProfile", e)),
            };
            match res {
                Ok(()) => return Ok(true),
                Err(e)
                    if e.to_string().to_lowercase().contains("iam instance profile")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!("waiting for IAM propagation: {e}");
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// What cgcloud needs to know of an instance type; an unknown type is an error.
    pub async fn instance_type_info(&self, instance_type: &str) -> Result<InstanceTypeInfo, AwsError> {
        let out = self
            .ec2
            .describe_instance_types()
            .instance_types(InstanceType::from(instance_type))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeInstanceTypes", e));
        let out = match out {
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidInstanceType")) => {
                return Err(AwsError::Invalid(format!(
                    "instance type '{instance_type}' does not exist in region {}",
                    self.region
                )))
            }
            other => other?,
        };
        let Some(info) = out.instance_types().first() else {
            return Err(AwsError::Invalid(format!(
                "instance type '{instance_type}' does not exist in region {}",
                self.region
            )));
        };
        let storage = info.instance_storage_info();
        let disks: Vec<u64> = storage
            .map(|s| s.disks())
            .unwrap_or_default()
            .iter()
            .flat_map(|d| {
                let size = u64::try_from(d.size_in_gb().unwrap_or(1)).unwrap_or(1);
                std::iter::repeat_n(size, usize::try_from(d.count().unwrap_or(0)).unwrap_or(0))
            })
            .collect();
        let nvme = storage
            .and_then(|s| s.nvme_support())
            .is_some_and(|n| *n != aws_sdk_ec2::types::EphemeralNvmeSupport::Unsupported);
        Ok(InstanceTypeInfo {
            arches: info
                .processor_info()
                .map(|p| p.supported_architectures().iter().map(|a| a.as_str().to_owned()).collect())
                .unwrap_or_else(|| vec!["x86_64".to_owned()]),
            instance_store_gb: disks,
            nvme_instance_store: nvme,
        })
    }

    /// The names of the region's availability zones.
    pub async fn zones(&self) -> Result<Vec<String>, AwsError> {
        let out = self
            .ec2
            .describe_availability_zones()
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeAvailabilityZones", e))?;
        Ok(out.availability_zones().iter().filter_map(|z| z.zone_name().map(str::to_owned)).collect())
    }

    /// Images by id.
    pub async fn image_by_id(&self, image_id: &str) -> Result<Option<FoundImage>, AwsError> {
        let out = self.ec2.describe_images().image_ids(image_id).send().await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let e = self.classify("ec2:DescribeImages", e);
                if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) {
                    return Ok(None);
                }
                return Err(e);
            }
        };
        Ok(out.images().first().map(found_image))
    }

    /// The newest available image owned by one of `owners` whose name matches `name` (a
    /// DescribeImages wildcard pattern) for `arch`.
    pub async fn newest_image(
        &self,
        owners: &[String],
        name: &str,
        arch: &str,
    ) -> Result<Option<FoundImage>, AwsError> {
        let pages: Vec<_> = self
            .ec2
            .describe_images()
            .set_owners(Some(owners.to_vec()))
            .filters(filter("name", &[name]))
            .filters(filter("architecture", &[arch]))
            .filters(filter("state", &["available"]))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeImages", e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.images())
            .filter(|i| !i.name().unwrap_or_default().to_lowercase().contains("beta"))
            .max_by(|a, b| (a.creation_date(), a.name()).cmp(&(b.creation_date(), b.name())))
            .map(found_image))
    }

    /// The cgcloud images of `role` in `namespace`, oldest first.
    pub async fn list_images(&self, namespace: &str, role: Option<&str>) -> Result<Vec<ImageInfo>, AwsError> {
        let mut req = self.ec2.describe_images().owners("self").filters(tag_filter(tags::NAMESPACE, namespace));
        if let Some(r) = role {
            req = req.filters(tag_filter(tags::ROLE, r));
        }
        let pages: Vec<_> = req
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeImages", e))?;
        let mut images: Vec<ImageInfo> = pages
            .iter()
            .flat_map(|p| p.images())
            .filter_map(|i| {
                let tags = to_tags(i.tags());
                if tags.get(tags::NAMESPACE).map(String::as_str) != Some(namespace) {
                    return None;
                }
                Some(ImageInfo {
                    image_id: i.image_id()?.to_owned(),
                    name: i.name().unwrap_or_default().to_owned(),
                    role: tags.get(tags::ROLE).cloned()?,
                    state: i.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    creation_date: i.creation_date().unwrap_or_default().to_owned(),
                    generation: tags.get(tags::GENERATION).and_then(|g| g.parse().ok()).unwrap_or(0),
                    role_hash: tags.get(tags::ROLE_HASH).cloned(),
                    snapshot_ids: i
                        .block_device_mappings()
                        .iter()
                        .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
                        .collect(),
                    source_instance: i.source_instance_id().map(str::to_owned),
                    tags,
                })
            })
            .collect();
        images.sort_by(|a, b| (&a.creation_date, &a.name).cmp(&(&b.creation_date, &b.name)));
        Ok(images)
    }

    /// Resolves where a launch goes: the given subnet, or the default VPC (and, with a zone,
    /// its default subnet there).
    pub async fn network(&self, subnet: Option<&str>, zone: Option<&str>) -> Result<Network, AwsError> {
        if let Some(subnet_id) = subnet {
            let out = self.ec2.describe_subnets().subnet_ids(subnet_id).send().await;
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    let e = self.classify("ec2:DescribeSubnets", e);
                    if e.code().is_some_and(|c| c.starts_with("InvalidSubnet")) {
                        return Err(AwsError::Invalid(format!(
                            "subnet '{subnet_id}' does not exist in region {}",
                            self.region
                        )));
                    }
                    return Err(e);
                }
            };
            let s = out.subnets().first().ok_or_else(|| {
                AwsError::Invalid(format!("subnet '{subnet_id}' does not exist in region {}", self.region))
            })?;
            let subnet_zone = s.availability_zone().map(str::to_owned);
            if let (Some(z), Some(sz)) = (zone, subnet_zone.as_deref()) {
                if z != sz {
                    return Err(AwsError::Invalid(format!("subnet '{subnet_id}' is in zone {sz}, not in {z}")));
                }
            }
            return Ok(Network {
                vpc_id: s.vpc_id().unwrap_or_default().to_owned(),
                subnet_id: Some(subnet_id.to_owned()),
                zone: subnet_zone,
            });
        }
        let vpcs = self
            .ec2
            .describe_vpcs()
            .filters(filter("is-default", &["true"]))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeVpcs", e))?;
        let vpc_id = vpcs.vpcs().first().and_then(|v| v.vpc_id()).map(str::to_owned).ok_or_else(|| {
            AwsError::Invalid(format!(
                "region {} has no default VPC; pass --subnet SUBNET_ID (or set `subnet` in your cgcloud profile)",
                self.region
            ))
        })?;
        Ok(Network { vpc_id, subnet_id: None, zone: zone.map(str::to_owned) })
    }

    /// Finds or creates the security group `name` in `vpc_id` and makes sure `rules` are
    /// authorized. Returns (group id, whether it was created now).
    pub async fn ensure_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: &str,
        group_tags: &Tags,
        rules: &[SgRule],
    ) -> Result<(String, bool), AwsError> {
        let existing = self.find_security_group(name, vpc_id).await?;
        let (group_id, created) = match existing {
            Some(id) => (id, false),
            None => {
                let created = self
                    .ec2
                    .create_security_group()
                    .group_name(name)
                    .description(description)
                    .vpc_id(vpc_id)
                    .tag_specifications(tag_spec(ResourceType::SecurityGroup, group_tags))
                    .send()
                    .await;
                match created {
                    Ok(out) => (out.group_id().unwrap_or_default().to_owned(), true),
                    Err(e) => {
                        let e = self.classify("ec2:CreateSecurityGroup", e);
                        // Another launch created it at the same moment.
                        if e.code() == Some("InvalidGroup.Duplicate") {
                            let id = self.find_security_group(name, vpc_id).await?.ok_or(e)?;
                            (id, false)
                        } else {
                            return Err(e);
                        }
                    }
                }
            }
        };
        for rule in rules {
            let mut perm =
                IpPermission::builder().ip_protocol(&rule.protocol).from_port(rule.from_port).to_port(rule.to_port);
            perm = match &rule.source {
                SgSource::Cidr(c) => {
                    perm.ip_ranges(IpRange::builder().cidr_ip(c).description(&rule.description).build())
                }
                SgSource::OwnGroup => perm.user_id_group_pairs(
                    UserIdGroupPair::builder().group_id(&group_id).description(&rule.description).build(),
                ),
            };
            let res = self
                .ec2
                .authorize_security_group_ingress()
                .group_id(&group_id)
                .ip_permissions(perm.build())
                .send()
                .await;
            if let Err(e) = res {
                let e = self.classify("ec2:AuthorizeSecurityGroupIngress", e);
                if e.code() != Some("InvalidPermission.Duplicate") {
                    return Err(e);
                }
            }
        }
        Ok((group_id, created))
    }

    pub async fn find_security_group(&self, name: &str, vpc_id: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .ec2
            .describe_security_groups()
            .filters(filter("group-name", &[name]))
            .filters(filter("vpc-id", &[vpc_id]))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeSecurityGroups", e))?;
        Ok(out.security_groups().first().and_then(|g| g.group_id()).map(str::to_owned))
    }

    /// Security groups tagged with `namespace`: (id, name, vpc).
    pub async fn namespace_security_groups(&self, namespace: &str) -> Result<Vec<(String, String, String)>, AwsError> {
        let pages: Vec<_> = self
            .ec2
            .describe_security_groups()
            .filters(tag_filter(tags::NAMESPACE, namespace))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeSecurityGroups", e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.security_groups())
            .filter(|g| to_tags(g.tags()).get(tags::NAMESPACE).map(String::as_str) == Some(namespace))
            .map(|g| {
                (
                    g.group_id().unwrap_or_default().to_owned(),
                    g.group_name().unwrap_or_default().to_owned(),
                    g.vpc_id().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// Security group ids used by any non-terminated instance.
    pub async fn security_groups_in_use(&self, group_ids: &[String]) -> Result<Vec<String>, AwsError> {
        Ok(self.security_group_users(group_ids).await?.into_keys().collect())
    }

    /// Of `group_ids`, the groups that instances (not terminated) use, with those instances.
    pub async fn security_group_users(&self, group_ids: &[String]) -> Result<BTreeMap<String, Vec<String>>, AwsError> {
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if group_ids.is_empty() {
            return Ok(users);
        }
        let refs: Vec<&str> = group_ids.iter().map(String::as_str).collect();
        let pages: Vec<_> = self
            .ec2
            .describe_instances()
            .filters(filter("instance.group-id", &refs))
            .filters(filter("instance-state-name", &["pending", "running", "stopping", "stopped", "shutting-down"]))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeInstances", e))?;
        for i in pages.iter().flat_map(|p| p.reservations()).flat_map(|r| r.instances()) {
            let id = i.instance_id().unwrap_or_default().to_owned();
            for g in i.security_groups().iter().filter_map(|g| g.group_id()) {
                if group_ids.iter().any(|x| x == g) {
                    users.entry(g.to_owned()).or_default().push(id.clone());
                }
            }
        }
        Ok(users)
    }

    pub async fn delete_security_group(&self, group_id: &str) -> Result<(), AwsError> {
        self.ec2
            .delete_security_group()
            .group_id(group_id)
            .send()
            .await
            .map_err(|e| self.classify("ec2:DeleteSecurityGroup", e))?;
        Ok(())
    }

    /// Launches instances. Retries for a while on the errors that only mean a just-created
    /// IAM instance profile or security group has not propagated yet.
    pub async fn run_instances(&self, spec: &LaunchSpec) -> Result<Vec<Instance>, AwsError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut map_instance_store = true;
        loop {
            let mut req = self
                .ec2
                .run_instances()
                .image_id(&spec.image_id)
                .instance_type(InstanceType::from(spec.instance_type.as_str()))
                .min_count(spec.min_count.unwrap_or(spec.count).clamp(1, spec.count.max(1)))
                .max_count(spec.count)
                .set_key_name(spec.key_name.clone())
                .set_security_group_ids(Some(spec.security_group_ids.clone()))
                .set_subnet_id(spec.subnet_id.clone())
                .set_client_token(spec.client_token.clone())
                .user_data(base64::engine::general_purpose::STANDARD.encode(&spec.user_data))
                .set_tag_specifications((!spec.tags.is_empty()).then(|| {
                    vec![tag_spec(ResourceType::Instance, &spec.tags), tag_spec(ResourceType::Volume, &spec.tags)]
                }));
            if let Some(zone) = &spec.zone {
                req = req.placement(Placement::builder().availability_zone(zone).build());
            }
            if let Some(max_price) = &spec.spot {
                let mut opts = aws_sdk_ec2::types::SpotMarketOptions::builder()
                    .spot_instance_type(aws_sdk_ec2::types::SpotInstanceType::OneTime)
                    .instance_interruption_behavior(aws_sdk_ec2::types::InstanceInterruptionBehavior::Terminate);
                if let Some(p) = max_price {
                    opts = opts.max_price(p);
                }
                req = req.instance_market_options(
                    aws_sdk_ec2::types::InstanceMarketOptionsRequest::builder()
                        .market_type(aws_sdk_ec2::types::MarketType::Spot)
                        .spot_options(opts.build())
                        .build(),
                );
            }
            if let Some(profile) = &spec.instance_profile {
                req = req.iam_instance_profile(IamInstanceProfileSpecification::builder().name(profile).build());
            }
            let store = if map_instance_store { spec.instance_store_devices.as_slice() } else { &[] };
            for (i, device) in store.iter().enumerate() {
                req = req.block_device_mappings(
                    BlockDeviceMapping::builder().device_name(device).virtual_name(format!("ephemeral{i}")).build(),
                );
            }
            if let Some((device, size)) = &spec.root_volume {
                req = req.block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name(device)
                        .ebs(
                            EbsBlockDevice::builder()
                                .volume_size(*size)
                                .volume_type(VolumeType::Gp3)
                                .delete_on_termination(true)
                                .build(),
                        )
                        .build(),
                );
            }
            match req.send().await {
                Ok(out) => return Ok(out.instances().to_vec()),
                Err(e) => {
                    let e = self.classify("ec2:RunInstances", e);
                    let msg = e.to_string().to_lowercase();
                    let propagating = e.code() == Some("InvalidGroup.NotFound")
                        || msg.contains("iam instance profile")
                        || msg.contains("no associated iam roles");
                    if propagating && tokio::time::Instant::now() < deadline {
                        tracing::debug!("waiting for IAM/security group propagation: {e}");
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        continue;
                    }
                    // Emulators (moto) accept only EBS mappings; EC2 takes ephemeralN ones.
                    if map_instance_store
                        && !spec.instance_store_devices.is_empty()
                        && e.code() == Some("MissingParameter")
                        && msg.contains("ebs")
                    {
                        tracing::warn!(
                            "this EC2 endpoint refuses instance-store mappings ({e}); launching without them"
                        );
                        map_instance_store = false;
                        continue;
                    }
                    if e.code() == Some("InvalidKeyPair.NotFound") {
                        return Err(AwsError::Invalid(format!(
                            "key pair '{}' does not exist in region {}; register it with `cgcloud register-key ~/.ssh/id_ed25519.pub`",
                            spec.key_name.as_deref().unwrap_or_default(),
                            self.region
                        )));
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Spot prices of an instance type since `since` (all pages), or the latest ones if there
    /// are none in that window.
    pub async fn spot_price_history(
        &self,
        instance_type: &str,
        since: std::time::SystemTime,
    ) -> Result<Vec<cgcloud_core::spot::PricePoint>, AwsError> {
        let fetch = |start: Option<std::time::SystemTime>| async move {
            let mut req = self
                .ec2
                .describe_spot_price_history()
                .instance_types(InstanceType::from(instance_type))
                .product_descriptions("Linux/UNIX");
            if let Some(s) = start {
                req = req.start_time(aws_smithy_types::DateTime::from(s));
            }
            let pages: Vec<_> = req
                .into_paginator()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .map_err(|e| self.classify("ec2:DescribeSpotPriceHistory", e))?;
            Ok::<_, AwsError>(
                pages
                    .iter()
                    .flat_map(|p| p.spot_price_history())
                    .filter_map(|h| {
                        Some(cgcloud_core::spot::PricePoint {
                            zone: h.availability_zone()?.to_owned(),
                            time: h.timestamp().map(|t| t.secs()).unwrap_or(0),
                            price: h.spot_price()?.parse().ok()?,
                        })
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let recent = fetch(Some(since)).await?;
        if !recent.is_empty() {
            return Ok(recent);
        }
        fetch(None).await
    }

    /// The subnet of `vpc_id` in `zone`, if any.
    pub async fn subnet_in_zone(&self, vpc_id: &str, zone: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .ec2
            .describe_subnets()
            .filters(filter("vpc-id", &[vpc_id]))
            .filters(filter("availability-zone", &[zone]))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeSubnets", e))?;
        Ok(out.subnets().first().and_then(|s| s.subnet_id()).map(str::to_owned))
    }

    pub async fn create_tags(&self, resources: &[String], tags: &Tags) -> Result<(), AwsError> {
        if resources.is_empty() || tags.is_empty() {
            return Ok(());
        }
        self.ec2
            .create_tags()
            .set_resources(Some(resources.to_vec()))
            .set_tags(Some(tag_list(tags)))
            .send()
            .await
            .map_err(|e| self.classify("ec2:CreateTags", e))?;
        Ok(())
    }

    pub async fn delete_tags(&self, resources: &[String], keys: &[&str]) -> Result<(), AwsError> {
        if resources.is_empty() {
            return Ok(());
        }
        self.ec2
            .delete_tags()
            .set_resources(Some(resources.to_vec()))
            .set_tags(Some(keys.iter().map(|k| Tag::builder().key(*k).build()).collect()))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DeleteTags", e))?;
        Ok(())
    }

    /// Stops or terminates instance `id` as a spot interruption. Only the local cloud tells the
    /// two apart: its moto records EC2's state reason for an interruption when the request
    /// carries `X-Cgcloud-Spot-Interruption` (see cgcloud-localcloud's moto launcher).
    pub async fn interrupt(&self, id: &str, stop: bool) -> Result<(), AwsError> {
        let mark = |req: &mut aws_smithy_runtime_api::http::Request| {
            req.headers_mut().insert("x-cgcloud-spot-interruption", "1");
        };
        if stop {
            self.ec2
                .stop_instances()
                .instance_ids(id)
                .customize()
                .mutate_request(mark)
                .send()
                .await
                .map_err(|e| self.classify("ec2:StopInstances", e))?;
        } else {
            self.ec2
                .terminate_instances()
                .instance_ids(id)
                .customize()
                .mutate_request(mark)
                .send()
                .await
                .map_err(|e| self.classify("ec2:TerminateInstances", e))?;
        }
        Ok(())
    }

    pub async fn terminate(&self, ids: &[String]) -> Result<(), AwsError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.ec2
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| self.classify("ec2:TerminateInstances", e))?;
        Ok(())
    }

    pub async fn stop(&self, ids: &[String]) -> Result<(), AwsError> {
        self.ec2
            .stop_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| self.classify("ec2:StopInstances", e))?;
        Ok(())
    }

    pub async fn start(&self, ids: &[String]) -> Result<(), AwsError> {
        self.ec2
            .start_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| self.classify("ec2:StartInstances", e))?;
        Ok(())
    }

    pub async fn reboot(&self, ids: &[String]) -> Result<(), AwsError> {
        self.ec2
            .reboot_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| self.classify("ec2:RebootInstances", e))?;
        Ok(())
    }

    /// The state of each instance: id → (state, reason message).
    pub async fn instance_states(
        &self,
        ids: &[String],
    ) -> Result<BTreeMap<String, (String, Option<String>)>, AwsError> {
        let instances = self.describe_instances(ids).await?;
        Ok(instances
            .iter()
            .filter_map(|i| {
                Some((
                    i.instance_id()?.to_owned(),
                    (
                        i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default(),
                        // A failure tag explains more than EC2's generic state reason.
                        to_tags(i.tags())
                            .remove(tags::FAILURE)
                            .or_else(|| i.state_reason().and_then(|r| r.message()).map(str::to_owned)),
                    ),
                ))
            })
            .collect())
    }

    /// Creates an image of a (stopped) instance. The tags go on the image at once and on its
    /// snapshots once they exist (see [`Cloud::tag_image_snapshots`]).
    pub async fn create_image(
        &self,
        instance_id: &str,
        name: &str,
        description: &str,
        image_tags: &Tags,
        exclude_devices: &[String],
    ) -> Result<String, AwsError> {
        // `NoDevice` keeps an attached volume (a box's persistent volume) out of the image.
        let excluded: Vec<BlockDeviceMapping> = exclude_devices
            .iter()
            .map(|d| BlockDeviceMapping::builder().device_name(d).no_device("").build())
            .collect();
        let out = self
            .ec2
            .create_image()
            .instance_id(instance_id)
            .name(name)
            .description(description)
            .set_block_device_mappings((!excluded.is_empty()).then_some(excluded))
            .tag_specifications(tag_spec(ResourceType::Image, image_tags))
            .send()
            .await
            .map_err(|e| self.classify("ec2:CreateImage", e))?;
        out.image_id().map(str::to_owned).ok_or_else(|| other("ec2:CreateImage", "no image id in the response"))
    }

    /// Tags the snapshots of an image (so that `cleanup` can scope them to a namespace).
    pub async fn tag_image_snapshots(&self, image_id: &str, snapshot_tags: &Tags) -> Result<Vec<String>, AwsError> {
        let out = self
            .ec2
            .describe_images()
            .image_ids(image_id)
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeImages", e))?;
        let snapshots: Vec<String> = out
            .images()
            .iter()
            .flat_map(|i| i.block_device_mappings())
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
            .collect();
        self.create_tags(&snapshots, snapshot_tags).await?;
        Ok(snapshots)
    }

    /// The state of an image, or None if it no longer exists.
    pub async fn image_state(&self, image_id: &str) -> Result<Option<String>, AwsError> {
        match self.ec2.describe_images().image_ids(image_id).send().await {
            Ok(o) => Ok(o.images().first().and_then(|i| i.state()).map(|s| s.as_str().to_owned())),
            Err(e) => {
                let e = self.classify("ec2:DescribeImages", e);
                if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub async fn deregister_image(&self, image_id: &str) -> Result<(), AwsError> {
        self.ec2
            .deregister_image()
            .image_id(image_id)
            .send()
            .await
            .map_err(|e| self.classify("ec2:DeregisterImage", e))?;
        Ok(())
    }

    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), AwsError> {
        self.ec2
            .delete_snapshot()
            .snapshot_id(snapshot_id)
            .send()
            .await
            .map_err(|e| self.classify("ec2:DeleteSnapshot", e))?;
        Ok(())
    }

    /// Snapshots owned by this account and tagged with `namespace`: (id, description, tags).
    pub async fn namespace_snapshots(&self, namespace: &str) -> Result<Vec<(String, String, Tags)>, AwsError> {
        let pages: Vec<_> = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(tag_filter(tags::NAMESPACE, namespace))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeSnapshots", e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.snapshots())
            .map(|s| {
                (
                    s.snapshot_id().unwrap_or_default().to_owned(),
                    s.description().unwrap_or_default().to_owned(),
                    to_tags(s.tags()),
                )
            })
            .filter(|(_, _, t)| t.get(tags::NAMESPACE).map(String::as_str) == Some(namespace))
            .collect())
    }

    /// Volumes tagged with `namespace`: (id, state, tags).
    pub async fn namespace_volumes(&self, namespace: &str) -> Result<Vec<(String, String, Tags)>, AwsError> {
        let pages: Vec<_> = self
            .ec2
            .describe_volumes()
            .filters(tag_filter(tags::NAMESPACE, namespace))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeVolumes", e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.volumes())
            .map(|v| {
                (
                    v.volume_id().unwrap_or_default().to_owned(),
                    v.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    to_tags(v.tags()),
                )
            })
            .filter(|(_, _, t)| t.get(tags::NAMESPACE).map(String::as_str) == Some(namespace))
            .collect())
    }

    /// The volumes of `namespace` whose `Name` tag is `name`.
    pub async fn volumes_named(&self, namespace: &str, name: &str) -> Result<Vec<VolumeInfo>, AwsError> {
        self.volumes_tagged(namespace, tags::NAME, name).await
    }

    /// The volumes of `namespace` with tag `key` = `value`.
    pub async fn volumes_tagged(&self, namespace: &str, key: &str, value: &str) -> Result<Vec<VolumeInfo>, AwsError> {
        let out = self
            .ec2
            .describe_volumes()
            .filters(tag_filter(tags::NAMESPACE, namespace))
            .filters(tag_filter(key, value))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeVolumes", e))?;
        Ok(out
            .volumes()
            .iter()
            .map(volume_info)
            .filter(|v| v.tags.get(tags::NAMESPACE).map(String::as_str) == Some(namespace))
            .collect())
    }

    /// One volume, or None if it does not exist (any more).
    pub async fn volume(&self, volume_id: &str) -> Result<Option<VolumeInfo>, AwsError> {
        match self.ec2.describe_volumes().volume_ids(volume_id).send().await {
            Ok(out) => Ok(out.volumes().first().map(volume_info)),
            Err(e) => {
                let e = self.classify("ec2:DescribeVolumes", e);
                if e.code() == Some("InvalidVolume.NotFound") {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates a gp3 volume tagged at creation; returns its id.
    pub async fn create_volume(&self, zone: &str, size_gb: u32, volume_tags: &Tags) -> Result<String, AwsError> {
        let out = self
            .ec2
            .create_volume()
            .availability_zone(zone)
            .size(i32::try_from(size_gb).unwrap_or(i32::MAX))
            .volume_type(VolumeType::Gp3)
            .tag_specifications(tag_spec(ResourceType::Volume, volume_tags))
            .send()
            .await
            .map_err(|e| self.classify("ec2:CreateVolume", e))?;
        out.volume_id().map(str::to_owned).ok_or_else(|| other("ec2:CreateVolume", "no volume id in the response"))
    }

    pub async fn attach_volume(&self, volume_id: &str, instance_id: &str, device: &str) -> Result<(), AwsError> {
        self.ec2
            .attach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .device(device)
            .send()
            .await
            .map_err(|e| self.classify("ec2:AttachVolume", e))?;
        Ok(())
    }

    /// The account's EC2 attributes (e.g. `max-instances`, `supported-platforms`), by name.
    pub async fn account_attributes(&self) -> Result<BTreeMap<String, Vec<String>>, AwsError> {
        let out = self
            .ec2
            .describe_account_attributes()
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeAccountAttributes", e))?;
        Ok(out
            .account_attributes()
            .iter()
            .filter_map(|a| {
                let values =
                    a.attribute_values().iter().filter_map(|v| v.attribute_value().map(str::to_owned)).collect();
                Some((a.attribute_name()?.to_owned(), values))
            })
            .collect())
    }

    /// The instance's console output as EC2 keeps it (decoded), if it has any yet.
    pub async fn console_output(&self, instance_id: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .ec2
            .get_console_output()
            .instance_id(instance_id)
            .send()
            .await
            .map_err(|e| self.classify("ec2:GetConsoleOutput", e))?;
        Ok(out
            .output()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    pub async fn delete_volume(&self, volume_id: &str) -> Result<(), AwsError> {
        self.ec2.delete_volume().volume_id(volume_id).send().await.map_err(|e| self.classify("ec2:DeleteVolume", e))?;
        Ok(())
    }

    /// A key pair with its public key, or None.
    pub async fn key_pair(&self, name: &str) -> Result<Option<KeyPairInfo>, AwsError> {
        match self.ec2.describe_key_pairs().key_names(name).include_public_key(true).send().await {
            Ok(out) => Ok(out.key_pairs().first().map(key_info)),
            Err(e) => {
                let e = self.classify("ec2:DescribeKeyPairs", e);
                if e.code() == Some("InvalidKeyPair.NotFound") {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Every key pair in the region, with public keys.
    pub async fn key_pairs(&self) -> Result<Vec<KeyPairInfo>, AwsError> {
        let out = self
            .ec2
            .describe_key_pairs()
            .include_public_key(true)
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeKeyPairs", e))?;
        Ok(out.key_pairs().iter().map(key_info).collect())
    }

    pub async fn import_key_pair(
        &self,
        name: &str,
        public_key: &str,
        key_tags: &Tags,
    ) -> Result<KeyPairInfo, AwsError> {
        let out = self
            .ec2
            .import_key_pair()
            .key_name(name)
            .public_key_material(aws_smithy_types::Blob::new(public_key.as_bytes()))
            .set_tag_specifications((!key_tags.is_empty()).then(|| vec![tag_spec(ResourceType::KeyPair, key_tags)]))
            .send()
            .await
            .map_err(|e| self.classify("ec2:ImportKeyPair", e))?;
        Ok(KeyPairInfo {
            name: out.key_name().unwrap_or(name).to_owned(),
            fingerprint: out.key_fingerprint().unwrap_or_default().to_owned(),
            key_type: String::new(),
            public_key: Some(public_key.to_owned()),
            owner: key_tags.get(tags::OWNER).cloned(),
        })
    }

    pub async fn delete_key_pair(&self, name: &str) -> Result<(), AwsError> {
        self.ec2.delete_key_pair().key_name(name).send().await.map_err(|e| self.classify("ec2:DeleteKeyPair", e))?;
        Ok(())
    }
}

/// A volume as cgcloud sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub volume_id: String,
    /// `creating`, `available`, `in-use`, ...
    pub state: String,
    pub zone: String,
    pub size_gb: u32,
    /// The instances it is attached to (or being attached to or detached from).
    pub attached_to: Vec<String>,
    pub tags: Tags,
}

fn volume_info(v: &aws_sdk_ec2::types::Volume) -> VolumeInfo {
    VolumeInfo {
        volume_id: v.volume_id().unwrap_or_default().to_owned(),
        state: v.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        zone: v.availability_zone().unwrap_or_default().to_owned(),
        size_gb: v.size().and_then(|s| u32::try_from(s).ok()).unwrap_or(0),
        attached_to: v.attachments().iter().filter_map(|a| a.instance_id().map(str::to_owned)).collect(),
        tags: to_tags(v.tags()),
    }
}

fn key_info(k: &aws_sdk_ec2::types::KeyPairInfo) -> KeyPairInfo {
    KeyPairInfo {
        name: k.key_name().unwrap_or_default().to_owned(),
        fingerprint: k.key_fingerprint().unwrap_or_default().to_owned(),
        key_type: k.key_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        public_key: k.public_key().map(str::to_owned),
        owner: k.tags().iter().find(|t| t.key() == Some(tags::OWNER)).and_then(|t| t.value()).map(str::to_owned),
    }
}

fn found_image(i: &aws_sdk_ec2::types::Image) -> FoundImage {
    FoundImage {
        image_id: i.image_id().unwrap_or_default().to_owned(),
        name: i.name().unwrap_or_default().to_owned(),
        creation_date: i.creation_date().unwrap_or_default().to_owned(),
        root_device: i.root_device_name().map(str::to_owned),
        owner: i.owner_id().map(str::to_owned),
        tags: to_tags(i.tags()),
    }
}

/// Where a security-group rule admits traffic from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SgSource {
    Cidr(String),
    /// The group itself (cluster-internal traffic).
    OwnGroup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgRule {
    /// `tcp`, `udp`, `icmp` or `-1`.
    pub protocol: String,
    pub from_port: i32,
    pub to_port: i32,
    pub source: SgSource,
    pub description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn instance_store_is_mapped_only_on_xen_types_and_never_on_sdf() {
        assert_eq!(instance_store_device_names(2), ["/dev/sdb", "/dev/sdc"]);
        assert_eq!(instance_store_device_names(5), ["/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sde", "/dev/sdg"]);
        assert_eq!(instance_store_device_names(24).len(), 24);
        let xen = InstanceTypeInfo { arches: vec![], instance_store_gb: vec![16, 16], nvme_instance_store: false };
        assert_eq!(xen.mapped_instance_store(), ["/dev/sdb", "/dev/sdc"]);
        let nitro = InstanceTypeInfo { nvme_instance_store: true, ..xen };
        assert!(nitro.mapped_instance_store().is_empty());
    }
}
