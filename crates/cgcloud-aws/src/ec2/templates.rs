//! Launch templates: what every worker of an elastic cluster launches with (image, security
//! groups, key, user data, instance profile, volumes and tags), kept in EC2 so that a leader can
//! launch workers naming only the template and its own choices of type, subnet and market. Also
//! the listing cleanup needs and the facts the local cloud's IAM evaluates RunInstances against.

use super::*;
use crate::{AwsError, Cloud};
use aws_sdk_ec2::types::{
    LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateIamInstanceProfileSpecificationRequest, LaunchTemplateTagSpecificationRequest,
    RequestLaunchTemplateData, ResourceType, VolumeType,
};
use base64::Engine as _;
use cgcloud_core::tags::{self, Tags};

/// What a launch template holds. There is no instance type, subnet or market: each launch
/// gives its own, because those are what a capacity fallback changes.
#[derive(Debug, Clone, Default)]
pub struct TemplateSpec {
    pub image_id: String,
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    /// Raw user data; base64-encoded here.
    pub user_data: String,
    /// The instance profile by ARN, not by name: IAM conditions (`ec2:InstanceProfile`) compare
    /// ARNs, and the template is what a leader's policy pins.
    pub instance_profile_arn: Option<String>,
    /// (device name, size in GiB) of the root volume, as in [`LaunchSpec`].
    pub root_volume: Option<(String, i32)>,
    /// Instance-store device names for Xen instance types, as in [`LaunchSpec`].
    pub instance_store_devices: Vec<String>,
    /// Tags every launched instance gets.
    pub instance_tags: Tags,
    /// Tags every launched instance's volumes get.
    pub volume_tags: Tags,
}

/// One version of a launch template, as RunInstances and IAM name it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateRef {
    pub id: String,
    pub version: i64,
    pub arn: String,
}

/// A launch template as a namespace listing finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateInfo {
    pub id: String,
    pub name: String,
    /// The default version (the one a launch that names no version gets).
    pub version: i64,
    /// The template resource's own tags (not those it gives instances).
    pub tags: Tags,
}

/// What one template version launches with, for IAM conditions on RunInstances.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateFacts {
    pub image_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    /// The profile's ARN; None also when the template names its profile only by name.
    pub instance_profile_arn: Option<String>,
    /// None when the version names none (EC2's default type applies, unless the request names one).
    pub instance_type: Option<String>,
    pub instance_tags: Tags,
    pub volume_tags: Tags,
    /// What the version also holds that these facts leave out and that would change what IAM
    /// authorizes a launch from it on (network interfaces, a market, placement, a profile named
    /// only by name, ...), by the data's field name: empty for the templates cgcloud makes.
    pub unmodelled: Vec<String>,
}

fn template_tag_spec(resource: ResourceType, tags: &Tags) -> LaunchTemplateTagSpecificationRequest {
    LaunchTemplateTagSpecificationRequest::builder().resource_type(resource).set_tags(Some(tag_list(tags))).build()
}

fn template_data(spec: &TemplateSpec) -> RequestLaunchTemplateData {
    let mut data = RequestLaunchTemplateData::builder()
        .image_id(&spec.image_id)
        .set_security_group_ids(Some(spec.security_group_ids.clone()))
        .set_key_name(spec.key_name.clone())
        .user_data(base64::engine::general_purpose::STANDARD.encode(&spec.user_data));
    if let Some(arn) = &spec.instance_profile_arn {
        data =
            data.iam_instance_profile(LaunchTemplateIamInstanceProfileSpecificationRequest::builder().arn(arn).build());
    }
    for (i, device) in spec.instance_store_devices.iter().enumerate() {
        data = data.block_device_mappings(
            LaunchTemplateBlockDeviceMappingRequest::builder()
                .device_name(device)
                .virtual_name(format!("ephemeral{i}"))
                .build(),
        );
    }
    if let Some((device, size)) = &spec.root_volume {
        data = data.block_device_mappings(
            LaunchTemplateBlockDeviceMappingRequest::builder()
                .device_name(device)
                .ebs(
                    LaunchTemplateEbsBlockDeviceRequest::builder()
                        .volume_size(*size)
                        .volume_type(VolumeType::Gp3)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        );
    }
    // EC2 refuses a TagSpecification without tags.
    for (resource, tags) in [(ResourceType::Instance, &spec.instance_tags), (ResourceType::Volume, &spec.volume_tags)] {
        if !tags.is_empty() {
            data = data.tag_specifications(template_tag_spec(resource, tags));
        }
    }
    data.build()
}

impl Cloud {
    /// Creates launch template `name` holding `spec`; `tags` go on the template itself.
    pub async fn create_launch_template(
        &self,
        name: &str,
        spec: &TemplateSpec,
        tags: &Tags,
    ) -> Result<TemplateRef, AwsError> {
        // Asked first, so that a failure here leaves no template behind.
        let (account, _) = self.caller_identity().await?;
        let out = self
            .ec2
            .create_launch_template()
            .launch_template_name(name)
            .launch_template_data(template_data(spec))
            .set_tag_specifications((!tags.is_empty()).then(|| vec![tag_spec(ResourceType::LaunchTemplate, tags)]))
            .send()
            .await
            .map_err(|e| self.classify("ec2:CreateLaunchTemplate", e))?;
        // EC2 checks template data only at launch; what it already knows is wrong comes back as
        // warnings, which would otherwise surface only as failed launches on the leader.
        for w in out.warning().map(|w| w.errors()).unwrap_or_default() {
            tracing::warn!(
                "launch template {name}: {}: {}",
                w.code().unwrap_or_default(),
                w.message().unwrap_or_default()
            );
        }
        let template = out.launch_template();
        let id = template.and_then(|t| t.launch_template_id()).ok_or_else(|| AwsError::Other {
            operation: "ec2:CreateLaunchTemplate",
            detail: format!("the answer for template {name} has no template id"),
        })?;
        Ok(TemplateRef {
            id: id.to_owned(),
            // A new template has exactly one version, number 1.
            version: template.and_then(|t| t.latest_version_number()).unwrap_or(1),
            arn: cgcloud_core::policy::launch_template_arn(&self.region, &account, id),
        })
    }

    /// Deletes launch template `id` with all its versions. A template that is already gone is
    /// not an error, so rollback and cleanup can both try.
    pub async fn delete_launch_template(&self, id: &str) -> Result<(), AwsError> {
        match self.ec2.delete_launch_template().launch_template_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.classify("ec2:DeleteLaunchTemplate", e);
                // EC2 says InvalidLaunchTemplateId.NotFound; moto 5.2.5 the name's code.
                if matches!(
                    e.code(),
                    Some("InvalidLaunchTemplateId.NotFound" | "InvalidLaunchTemplateName.NotFoundException")
                ) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The launch templates of namespace `ns` (by their `cgcloud:namespace` tag).
    pub async fn namespace_launch_templates(&self, ns: &str) -> Result<Vec<TemplateInfo>, AwsError> {
        let pages: Vec<_> = self
            .ec2
            .describe_launch_templates()
            .filters(tag_filter(tags::NAMESPACE, ns))
            .into_paginator()
            // moto 5.2.5 returns at most MaxResults (default 15) and never a next token.
            .page_size(200)
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeLaunchTemplates", e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.launch_templates())
            .map(|t| TemplateInfo {
                id: t.launch_template_id().unwrap_or_default().to_owned(),
                name: t.launch_template_name().unwrap_or_default().to_owned(),
                version: t.default_version_number().unwrap_or(1),
                tags: to_tags(t.tags()),
            })
            // As for instances: whatever an endpoint's filter support, nothing outside the
            // namespace is ever acted on.
            .filter(|t| t.tags.get(tags::NAMESPACE).map(String::as_str) == Some(ns))
            .collect())
    }

    /// What version `version` (a number, `$Latest` or `$Default`, as RunInstances takes it) of
    /// launch template `id` launches with; None if there is no such template or version.
    pub async fn launch_template_facts(&self, id: &str, version: &str) -> Result<Option<TemplateFacts>, AwsError> {
        Ok(self.template_version_facts(TemplateKey::Id(id), version).await?.map(|(_, facts)| facts))
    }

    /// As [`Cloud::launch_template_facts`] for the template called `name`, with its id.
    pub async fn named_launch_template_facts(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<(String, TemplateFacts)>, AwsError> {
        self.template_version_facts(TemplateKey::Name(name), version).await
    }

    async fn template_version_facts(
        &self,
        key: TemplateKey<'_>,
        version: &str,
    ) -> Result<Option<(String, TemplateFacts)>, AwsError> {
        let ask = self.ec2.describe_launch_template_versions().versions(version);
        let ask = match key {
            TemplateKey::Id(id) => ask.launch_template_id(id),
            TemplateKey::Name(name) => ask.launch_template_name(name),
        };
        let out = match ask.send().await {
            Ok(out) => out,
            Err(e) => {
                let e = self.classify("ec2:DescribeLaunchTemplateVersions", e);
                return match e.code() {
                    Some(
                        "InvalidLaunchTemplateId.NotFound"
                        | "InvalidLaunchTemplateId.VersionNotFound"
                        | "InvalidLaunchTemplateName.NotFoundException",
                    ) => Ok(None),
                    _ => Err(e),
                };
            }
        };
        let Some(found) = out.launch_template_versions().first() else { return Ok(None) };
        let (Some(id), Some(data)) = (found.launch_template_id(), found.launch_template_data()) else {
            return Ok(None);
        };
        let tags_for = |resource: ResourceType| {
            data.tag_specifications()
                .iter()
                .filter(|s| s.resource_type() == Some(&resource))
                .flat_map(|s| to_tags(s.tags()))
                .collect::<Tags>()
        };
        Ok(Some((
            id.to_owned(),
            TemplateFacts {
                image_id: data.image_id().map(str::to_owned),
                security_group_ids: data.security_group_ids().to_vec(),
                key_name: data.key_name().map(str::to_owned),
                instance_profile_arn: data.iam_instance_profile().and_then(|p| p.arn()).map(str::to_owned),
                instance_type: data.instance_type().map(|t| t.as_str().to_owned()),
                instance_tags: tags_for(ResourceType::Instance),
                volume_tags: tags_for(ResourceType::Volume),
                unmodelled: unmodelled(data),
            },
        )))
    }
}

/// How a launch template is named.
#[derive(Debug, Clone, Copy)]
enum TemplateKey<'a> {
    Id(&'a str),
    Name(&'a str),
}

/// The fields of `data` that [`TemplateFacts`] leaves out and that name resources a launch is
/// authorized on, or change its context.
fn unmodelled(data: &aws_sdk_ec2::types::ResponseLaunchTemplateData) -> Vec<String> {
    let profile_by_name = data.iam_instance_profile().is_some_and(|p| p.arn().is_none() && p.name().is_some());
    // moto copies the template's own tags into its data as a `launch-template` specification,
    // which no launch applies.
    let other_tags = data.tag_specifications().iter().any(|s| {
        !matches!(s.resource_type(), Some(ResourceType::Instance | ResourceType::Volume | ResourceType::LaunchTemplate))
    });
    let snapshot = data.block_device_mappings().iter().any(|m| m.ebs().and_then(|e| e.snapshot_id()).is_some());
    [
        ("IamInstanceProfile.Name", profile_by_name),
        ("NetworkInterfaces", !data.network_interfaces().is_empty()),
        ("SecurityGroups", !data.security_groups().is_empty()),
        ("InstanceMarketOptions", data.instance_market_options().is_some()),
        ("Placement", data.placement().is_some()),
        ("InstanceRequirements", data.instance_requirements().is_some()),
        ("CapacityReservationSpecification", data.capacity_reservation_specification().is_some()),
        ("LicenseSpecifications", !data.license_specifications().is_empty()),
        ("ElasticGpuSpecifications", !data.elastic_gpu_specifications().is_empty()),
        ("ElasticInferenceAccelerators", !data.elastic_inference_accelerators().is_empty()),
        ("KernelId", data.kernel_id().is_some()),
        ("RamDiskId", data.ram_disk_id().is_some()),
        ("TagSpecifications", other_tags),
        ("BlockDeviceMappings", snapshot),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(field, _)| field.to_owned())
    .collect()
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{
        LaunchTemplateIamInstanceProfileSpecification, LaunchTemplateInstanceMarketOptions,
        LaunchTemplateInstanceNetworkInterfaceSpecification, LaunchTemplateTagSpecification, MarketType, ResourceType,
        ResponseLaunchTemplateData,
    };

    /// What the local cloud's IAM would get wrong if the facts left it out is named.
    #[test]
    fn what_the_facts_leave_out_is_named() {
        let ours = ResponseLaunchTemplateData::builder()
            .image_id("ami-1")
            .security_group_ids("sg-1")
            .iam_instance_profile(LaunchTemplateIamInstanceProfileSpecification::builder().arn("arn:p").build())
            .tag_specifications(LaunchTemplateTagSpecification::builder().resource_type(ResourceType::Volume).build())
            .tag_specifications(
                LaunchTemplateTagSpecification::builder().resource_type(ResourceType::LaunchTemplate).build(),
            )
            .build();
        assert!(super::unmodelled(&ours).is_empty());
        let more = ResponseLaunchTemplateData::builder()
            .iam_instance_profile(LaunchTemplateIamInstanceProfileSpecification::builder().name("p").build())
            .network_interfaces(
                LaunchTemplateInstanceNetworkInterfaceSpecification::builder().subnet_id("subnet-1").build(),
            )
            .instance_market_options(
                LaunchTemplateInstanceMarketOptions::builder().market_type(MarketType::Spot).build(),
            )
            .tag_specifications(
                LaunchTemplateTagSpecification::builder().resource_type(ResourceType::NetworkInterface).build(),
            )
            .build();
        assert_eq!(
            super::unmodelled(&more),
            ["IamInstanceProfile.Name", "NetworkInterfaces", "InstanceMarketOptions", "TagSpecifications"]
        );
    }
}
