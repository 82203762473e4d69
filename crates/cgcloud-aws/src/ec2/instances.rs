//! Instances: finding cgcloud's boxes (and the original CGCloud's) by their tags, launching,
//! power, tags and instance profiles.

use super::*;
use crate::{AwsError, Cloud};
use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, IamInstanceProfileSpecification, Instance, InstanceType,
    LaunchTemplateSpecification, Placement, ResourceType, Tag, VolumeType,
};
use base64::Engine as _;
use cgcloud_core::model::BoxInfo;
use cgcloud_core::tags::{self, Tags};
use std::collections::BTreeMap;
use std::time::Duration;

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
    /// Launch from this template. The template then supplies the image, security groups,
    /// key, user data, instance profile and block devices, and those fields are not sent:
    /// a leader's policy allows a launch only with what its cluster's template holds.
    pub launch_template: Option<TemplateRef>,
}

/// Errors that mean EC2 could not provide the capacity (try elsewhere or later).
pub fn is_capacity_error(e: &AwsError) -> bool {
    e.code().is_some_and(|c| cgcloud_core::spot::CAPACITY_ERRORS.contains(&c))
}

/// What a launch without a template names itself: image, key, groups, user data, profile
/// and block devices (the instance-store ones only if `map_instance_store`).
fn without_template(
    mut req: RunInstancesFluentBuilder,
    spec: &LaunchSpec,
    map_instance_store: bool,
) -> RunInstancesFluentBuilder {
    req = req
        .image_id(&spec.image_id)
        .set_key_name(spec.key_name.clone())
        .set_security_group_ids(Some(spec.security_group_ids.clone()))
        .user_data(base64::engine::general_purpose::STANDARD.encode(&spec.user_data));
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
    req
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
    pub async fn describe_instances(&self, ids: &[String]) -> Result<Vec<InstanceInfo>, AwsError> {
        Ok(self.sdk_instances(ids).await?.iter().map(instance_info).collect())
    }

    /// The cgcloud boxes among instances `ids` (any state).
    pub async fn boxes_by_id(&self, ids: &[String]) -> Result<Vec<BoxInfo>, AwsError> {
        Ok(self.sdk_instances(ids).await?.iter().filter_map(box_from_instance).collect())
    }

    async fn sdk_instances(&self, ids: &[String]) -> Result<Vec<Instance>, AwsError> {
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
        match self.sdk_instances(&[id.to_owned()]).await {
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

    /// Launches instances. Retries for a while on the errors that only mean a just-created
    /// IAM instance profile or security group has not propagated yet.
    pub async fn run_instances(&self, spec: &LaunchSpec) -> Result<Vec<InstanceInfo>, AwsError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut map_instance_store = true;
        loop {
            let mut req = self
                .ec2
                .run_instances()
                .instance_type(InstanceType::from(spec.instance_type.as_str()))
                .min_count(spec.min_count.unwrap_or(spec.count).clamp(1, spec.count.max(1)))
                .max_count(spec.count)
                .set_subnet_id(spec.subnet_id.clone())
                .set_client_token(spec.client_token.clone())
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
            match &spec.launch_template {
                Some(t) => {
                    req = req.launch_template(
                        LaunchTemplateSpecification::builder()
                            .launch_template_id(&t.id)
                            .version(t.version.to_string())
                            .build(),
                    );
                }
                None => req = without_template(req, spec, map_instance_store),
            }
            match req.send().await {
                Ok(out) => return Ok(out.instances().iter().map(instance_info).collect()),
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
                    if e.code() == Some("InvalidKeyPair.NotFound") && spec.launch_template.is_none() {
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

    /// The last `lines` lines of instance `id`'s console (EC2's GetConsoleOutput), made
    /// printable: the instance writes its console, so it is untrusted text. Empty if EC2 has
    /// none yet (it keeps the console for a while after boot, not as it is written).
    pub async fn console_tail(&self, id: &str, lines: usize) -> Result<String, AwsError> {
        let out = self
            .ec2
            .get_console_output()
            .instance_id(id)
            .send()
            .await
            .map_err(|e| self.classify("ec2:GetConsoleOutput", e))?;
        let bytes = out
            .output()
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
            .unwrap_or_default();
        Ok(tail_lines(&String::from_utf8_lossy(&bytes), lines))
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
        let instances = self.sdk_instances(ids).await?;
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
}

/// The last `n` lines of `text`, each with control characters (escape sequences, carriage
/// returns) blanked, so that a console cannot rewrite the terminal it is shown on.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| tags::printable(l).trim_end().to_owned() + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::tail_lines;

    #[test]
    fn console_tails_are_the_last_lines_made_printable() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\n", 5), "a\n");
        assert_eq!(tail_lines("", 5), "");
        assert_eq!(tail_lines("ok\x1b[2J\rgone\n", 1), "ok [2J gone\n");
    }
}
